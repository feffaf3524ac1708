"""A local postroom: sandbox, coordinator and workers as separate child processes.

Used by `postroom demo`, the end-to-end tests, `make chaos` and `make bench`. Every child runs in
its own session (so a Ctrl-C reaches only the parent, which then stops them in order: workers,
coordinator, sandbox), logs to a file in the work directory, and is stopped by its PID. Ports are
chosen by the OS (port 0) and learned from ready files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from postroom.address import is_loopback_host
from postroom.tls import ENV_CA, ENV_CLIENT_CERT, ENV_CLIENT_KEY, ClientTls, sync_channel
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster_access import ClusterAccess, served_accounts
from sandbox.admin import SandboxAdmin

DEFAULT_READY_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05


class ClusterError(Exception):
    pass


@dataclass(slots=True)
class Child:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL, as a crash looks; waits until the process is gone."""
        self.signal(signal.SIGKILL)
        self.popen.wait()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """SIGTERM (a graceful drain), SIGKILL if it has not exited in time; the exit code."""
        if self.alive():
            self.signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_for_file(path: Path, child: Child, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text().strip()
            if text:
                return text
        if not child.alive():
            raise ClusterError(
                f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}"
            )
        time.sleep(POLL_INTERVAL_S)
    raise ClusterError(f"{child.name} not ready after {timeout_s:g}s:\n{child.log_tail()}")


LISTENING = re.compile(r"coordinator listening on \S+:(\d+) \(metrics (\S+),")


def wait_for_listening(
    child: Child, log_offset: int, timeout_s: float = DEFAULT_READY_TIMEOUT_S
) -> tuple[int, str]:
    """A coordinator's port and metrics URL from its start-up line in its log after
    `log_offset` (a standby writes no ready file until it is active)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(child.log_path, "rb") as log:
            log.seek(log_offset)
            found = LISTENING.search(log.read().decode(errors="replace"))
        if found:
            return int(found.group(1)), found.group(2)
        if not child.alive():
            raise ClusterError(
                f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}"
            )
        time.sleep(POLL_INTERVAL_S)
    raise ClusterError(f"{child.name} not listening after {timeout_s:g}s:\n{child.log_tail()}")


@dataclass(slots=True)
class Peer:
    """One of several coordinators on one PostgreSQL database."""

    name: str
    child: Child
    address: str
    metrics_url: str


@dataclass(slots=True)
class ClusterConfig:
    heartbeat_interval_s: float = 1.0
    lease_ttl_s: float = 3.0
    retry_initial_s: float = 0.5
    coordinator_args: Sequence[str] = ()
    worker_args: Sequence[str] = ()
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    # Where the sandbox and the coordinator listen and workers dial them (bench/partition.py puts
    # them on a lab's hub address so workers in network namespaces reach them). Beyond loopback
    # the cluster says --insecure-* where it has no TLS or tokens (a lab, not a deployment).
    host: str = "127.0.0.1"
    # Operator and device tokens, and a sandbox admin token, all made by the cluster
    # (cluster_access.py); what `postroom demo` runs.
    auth: bool = False
    # Several coordinators (start_coordinators): their --ownership-ttl (None: the default).
    ownership_ttl_s: float | None = None


class LocalCluster:
    def __init__(self, workdir: Path, config: ClusterConfig | None = None) -> None:
        self.workdir = workdir
        self.config = config or ClusterConfig()
        self.db_url = f"sqlite:///{workdir / 'postroom.db'}"
        self.sandbox: Child | None = None
        self.sandbox_url = ""
        self.coordinator: Child | None = None
        self.coordinator_address = ""
        self.metrics_url = ""
        self.workers: dict[str, Child] = {}
        self.peers: dict[str, Peer] = {}  # several coordinators on one PostgreSQL
        self.worker_metrics: dict[str, str] = {}
        self.console: Child | None = None
        self.console_url = ""
        self._launches = 0
        self.access = ClusterAccess(workdir) if self.config.auth else None
        self._exposed = not is_loopback_host(self.config.host)

    # ---- children ------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Child:
        self._launches += 1
        log_path = self.workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.config.env, **(env or {})}
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return Child(name, argv, log_path, popen)

    def start_sandbox(self) -> str:
        ready = self.workdir / "sandbox.ready"
        ready.unlink(missing_ok=True)
        argv = [
            self.config.python,
            "-m",
            "sandbox",
            "--listen",
            f"{self.config.host}:0",
            "--ready-file",
            str(ready),
        ]
        if self.access is not None:
            argv += ["--admin-token-file", str(self.access.prepare_sandbox())]
        elif self._exposed:
            argv.append("--insecure-no-admin-token")
        self.sandbox = self._spawn("sandbox", argv)
        port = wait_for_file(ready, self.sandbox)
        self.sandbox_url = f"http://{self.config.host}:{port}"
        return self.sandbox_url

    def start_coordinator(self, extra: Sequence[str] = ()) -> str:
        """Start (or restart, on the same database and port) the coordinator."""
        ready = self.workdir / "coordinator.ready"
        ready.unlink(missing_ok=True)
        listen = self.coordinator_address or f"{self.config.host}:0"
        argv = self._coordinator_argv(listen, ready, extra)
        if self.db_url.startswith(("postgresql:", "postgres:")) and "--name" not in argv:
            # The same name on every restart: it takes its shards back at once instead of
            # waiting for its predecessor's leases to run out (--ownership-ttl).
            argv += ["--name", "coordinator"]
        self.coordinator = self._spawn("coordinator", argv)
        grpc_port, metrics_port = wait_for_file(ready, self.coordinator).split()
        self.coordinator_address = f"{self.config.host}:{grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        return self.coordinator_address

    def _coordinator_argv(self, listen: str, ready: Path, extra: Sequence[str]) -> list[str]:
        c = self.config
        argv = [
            c.python,
            "-m",
            "coordinator.main",
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--db",
            self.db_url,
            "--assets",
            str(self.workdir / "assets"),
            "--ready-file",
            str(ready),
            "--heartbeat-interval",
            str(c.heartbeat_interval_s),
            "--lease-ttl",
            str(c.lease_ttl_s),
            "--retry-initial",
            str(c.retry_initial_s),
            *c.coordinator_args,
            *extra,
        ]
        if self.access is not None:
            argv += ["--bootstrap-admin-token-file", str(self.access.admin_token_file)]
        if self._exposed and "--tls-cert" not in argv:
            argv.append("--insecure-plaintext")
        if self._exposed and self.access is None:
            argv.append("--insecure-no-auth")
        return argv

    # ---- several coordinators on one PostgreSQL ------------------------------------------

    def start_coordinators(self, n: int, extra: Sequence[str] = ()) -> list[str]:
        """`n` coordinators on one PostgreSQL database (`coord-1` ... `coord-n`), each on a port
        of its own; returns their addresses once one of them is active. Operators' clients call
        the first (any would do: a standby forwards them to the active one), workers get all."""
        if not self.db_url.startswith(("postgresql:", "postgres:")):
            raise ClusterError("several coordinators need a PostgreSQL --db")
        for i in range(1, n + 1):
            self.start_peer(f"coord-{i}", extra)
        first = self.peers["coord-1"]
        self.coordinator, self.coordinator_address = first.child, first.address
        self.metrics_url = first.metrics_url
        self.wait_active()
        return [peer.address for peer in self.peers.values()]

    def start_peer(self, name: str, extra: Sequence[str] = ()) -> Peer:
        """Start (or restart, on its old port) one coordinator of several; it comes up as a
        standby and takes over when no other is active."""
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        old = self.peers.get(name)
        listen = old.address if old is not None else f"{self.config.host}:0"
        ttl = self.config.ownership_ttl_s
        more = ["--name", name, *(["--ownership-ttl", str(ttl)] if ttl else []), *extra]
        log = self.workdir / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        child = self._spawn(name, self._coordinator_argv(listen, ready, more))
        port, metrics_url = wait_for_listening(child, offset)
        peer = Peer(name, child, f"{self.config.host}:{port}", metrics_url)
        self.peers[name] = peer
        if old is not None and self.coordinator is old.child:
            self.coordinator = child
        return peer

    def coordinator_targets(self, first: int = 0) -> str:
        """The workers' `--coordinator` list: every coordinator, starting at the `first`th."""
        if not self.peers:
            return self.coordinator_address
        addresses = [peer.address for peer in self.peers.values()]
        first %= len(addresses)
        return ",".join(addresses[first:] + addresses[:first])

    def active_peer(self) -> Peer | None:
        """The coordinator that serves now (its health says SERVING), if any."""
        for peer in self.peers.values():
            if peer.child.alive() and self.serving(peer.address):
                return peer
        return None

    def serving(self, address: str, timeout_s: float = 2.0) -> bool:
        """Its health says SERVING: the active coordinator (a standby says NOT_SERVING)."""
        with sync_channel(address, self._client_tls()) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=timeout_s
                )
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    def wait_active(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> Peer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            peer = self.active_peer()
            if peer is not None:
                return peer
            time.sleep(POLL_INTERVAL_S)
        tails = "\n".join(f"--- {p.name}:\n{p.child.log_tail(10)}" for p in self.peers.values())
        raise ClusterError(f"no coordinator active after {timeout_s:g}s:\n{tails}")

    def start_worker(
        self,
        device_id: str,
        *,
        platforms: Iterable[str] = ("sandbox",),
        concurrency: int = 4,
        extra: Sequence[str] = (),
        accounts: Path | None = None,
        media_dirs: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        wrap: Sequence[str] = (),
        kind: str = "api",
        coordinators: str = "",
    ) -> Child:
        """A worker serving sandbox `platforms` and/or the real accounts of an `accounts` file
        (their credential references resolved from `env`). `wrap` prefixes the command, e.g.
        `ip netns exec NS` to run it in a network namespace (it must exec, keeping the PID).
        `coordinators`: the addresses it dials (default: every coordinator, in turn)."""
        platforms = list(platforms)
        if not self.coordinator_address or (platforms and not self.sandbox_url):
            raise ClusterError("start the sandbox and the coordinator before workers")
        sources = [f"--sandbox-url={self.sandbox_url}"] if platforms else []
        if accounts is not None:
            sources.append(f"--accounts={accounts}")
        sources += [f"--media-dir={folder}" for folder in media_dirs]
        argv = [
            *wrap,
            self.config.python,
            "-m",
            "worker.main",
            "--coordinator",
            coordinators or self.coordinator_targets(len(self.workers)),
            "--device-id",
            device_id,
            "--kind",
            kind,
            "--concurrency",
            str(concurrency),
            "--metrics-listen",
            "127.0.0.1:0",
            *sources,
            *[arg for p in platforms for arg in ("--platform", p)],
            *self.config.worker_args,
            *extra,
        ]
        if self._exposed and not self._client_tls().wanted:
            argv.append("--insecure-plaintext")
        if self.access is not None:  # enrolled for what it serves; the token via its environment
            with self.client() as client:
                served = served_accounts(platforms, accounts)
                token = self.access.device_token(client, device_id, served)
            env = {**(env or {}), "POSTROOM_DEVICE_TOKEN": token}
        child = self._spawn(device_id, argv, env)
        self.workers[device_id] = child
        return child

    def start_console(self, *, token_file: Path | None = None) -> str:
        """The web console (`postroom console`) on loopback; its URL. With `token_file` it is
        single-user (that token for every request), else people sign in with their tokens."""
        ready = self.workdir / "console.ready"
        ready.unlink(missing_ok=True)
        argv = [self.config.python, "-m", "postroom_cli", "console", "--listen", "127.0.0.1:0"]
        argv += ["--coordinator", self.coordinator_address, "--ready-file", str(ready)]
        if token_file is not None:
            argv += ["--token-file", str(token_file)]
        if self._exposed and not self._client_tls().wanted:
            argv.append("--insecure-plaintext")
        self.console = self._spawn("console", argv)
        self.console_url = f"http://127.0.0.1:{wait_for_file(ready, self.console)}"
        return self.console_url

    def wait_online(
        self, device_ids: Iterable[str], timeout_s: float = DEFAULT_READY_TIMEOUT_S
    ) -> None:
        wanted = set(device_ids)
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                for device_id in wanted:
                    child = self.workers.get(device_id)
                    if child is not None and not child.alive():
                        raise ClusterError(f"worker {device_id} exited:\n{child.log_tail()}")
                devices = client.list_devices()
                online = {d.id for d in devices.devices if d.state == pb.DEVICE_STATE_ONLINE}
                if wanted <= online:
                    return
                time.sleep(POLL_INTERVAL_S)
        raise ClusterError(f"workers not online after {timeout_s:g}s: {sorted(wanted - online)}")

    def _client_tls(self) -> ClientTls:
        """TLS as the children see it (POSTROOM_CA... in the cluster's env), for our clients."""
        env = {**os.environ, **self.config.env}

        def path(name: str) -> Path | None:
            return Path(env[name]) if env.get(name) else None

        return ClientTls(
            ca=path(ENV_CA),
            cert=path(ENV_CLIENT_CERT),
            key=path(ENV_CLIENT_KEY),
            insecure_plaintext=self._exposed and not env.get(ENV_CA),
        )

    def client(self, timeout_s: float = 10.0, *, token: str | None = None) -> PublishingClient:
        """A client of the coordinator; with auth on it is the admin unless `token` says."""
        if token is None:
            token = self.access.admin_token if self.access is not None else ""
        return PublishingClient(
            self.coordinator_address, timeout_s=timeout_s, token=token, tls=self._client_tls()
        )

    def sandbox_admin(self) -> SandboxAdmin:
        token = self.access.sandbox_admin_token if self.access is not None else ""
        return SandboxAdmin(self.sandbox_url, token=token)

    # ---- convenience for scripts and tests -----------------------------------------------

    def publish(
        self, client: PublishingClient, text: str, targets: Sequence[str], **create: object
    ) -> str:
        """Create, submit, approve and schedule a post; its id."""
        req = pub.CreatePostRequest(
            text=text,
            targets=[
                pb.Target(platform=t.split(":")[0], account=t.split(":", 1)[1]) for t in targets
            ],
            actor="demo",
            **create,  # type: ignore[arg-type]
        )
        post = client.create_post(req)
        client.submit_post(post.id, actor="demo")
        if self.access is not None:  # someone else approves (four eyes)
            token = self.access.approver_token(client)
            with self.client(token=token) as approver:
                approver.approve_post(post.id, actor="demo", content_hash=post.content_hash)
        else:
            client.approve_post(post.id, actor="demo", content_hash=post.content_hash)
        client.schedule_post(post.id, actor="demo")
        return post.id

    def stop_all(self) -> None:
        """The console and workers first (they drain), then the coordinator, then the sandbox."""
        if self.console is not None:
            self.console.stop()
        for child in list(self.workers.values()):
            child.stop()
        for peer in self.peers.values():
            peer.child.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.sandbox is not None:
            self.sandbox.stop()

    def kill_all(self) -> None:
        peers = [peer.child for peer in self.peers.values()]
        for child in [self.console, *self.workers.values(), *peers, self.coordinator, self.sandbox]:
            if child is not None and child.alive():
                child.kill()

    def __enter__(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.stop_all()
        finally:
            self.kill_all()
