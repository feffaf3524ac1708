"""An in-process coordinator with authentication on (and TLS when asked), for the access tests.

    async with secure_coordinator(tmp_path) as rig:
        admin = rig.stub(rig.admin_token)            # a Publishing stub sending that token
        token = await rig.token("alice", ac.ROLE_AUTHOR)
        device = await rig.enroll("dev-1", "sandbox:acme")

It is wired as `coordinator.main.serve` wires it (the OperatorAuth interceptor, the Credentials
the actor owns, the bootstrap admin token), on 127.0.0.1 port 0, in real time (leases are not the
point here). TLS material comes from `make_pki` (the `cryptography` package): a CA, a server
certificate for 127.0.0.1/localhost, and client certificates by common name.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from coordinator.access.bootstrap import bootstrap_admin
from coordinator.access.interceptor import OperatorAuth
from coordinator.access.registry import AccessPolicy, Credentials
from coordinator.actor import Coordinator, CoordinatorConfig
from coordinator.assets import AssetStore
from coordinator.gateway import WorkerGatewayService
from coordinator.leasing.core import LeaseConfig
from coordinator.main import GRPC_SERVER_OPTIONS
from coordinator.publishing import PublishingService
from coordinator.store import open_store
from postroom.clock import SystemClock
from postroom.tls import server_credentials
from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2_grpc, worker_gateway_pb2_grpc
from postroom.v1 import types_pb2 as pb

# ---- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files in a folder: ca.crt, server.crt/.key, and <name>.crt/.key per client."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    def client(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.crt", self.folder / f"{name}.key"


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path, clients: Sequence[str] = ()) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("postroom test CA", ca_key, None, ca=True)
    pki = Pki(folder)
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issuer = (ca_cert.subject, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _issue("localhost", server_key, issuer, sans=sans)
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    for name in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, issuer)
        cert_path, key_path = pki.client(name)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    return pki


# ---- the coordinator -------------------------------------------------------------------------


@dataclass
class Rig:
    address: str
    coordinator: Coordinator
    admin_token: str
    channel_credentials: grpc.ChannelCredentials | None
    channels: list[grpc.aio.Channel]

    def channel(self) -> grpc.aio.Channel:
        if self.channel_credentials is None:
            channel = grpc.aio.insecure_channel(self.address)
        else:
            channel = grpc.aio.secure_channel(self.address, self.channel_credentials)
        self.channels.append(channel)
        return channel

    def stub(self, token: str = "") -> Stub:
        return Stub(publishing_pb2_grpc.PublishingStub(self.channel()), token)

    async def token(self, name: str, role: ac.Role.ValueType) -> str:
        made = await self.stub(self.admin_token).call("CreateToken", ac.CreateTokenRequest(
            name=name, role=role))  # fmt: skip
        assert isinstance(made, ac.CreateTokenResponse)
        return made.secret

    async def enroll(self, name: str, *accounts: str) -> str:
        targets = [
            pb.Target(platform=a.split(":")[0], account=a.split(":", 1)[1]) for a in accounts
        ]
        made = await self.stub(self.admin_token).call(
            "EnrollDevice", ac.EnrollDeviceRequest(name=name, accounts=targets)
        )
        assert isinstance(made, ac.EnrollDeviceResponse)
        return made.secret


class Stub:
    """A Publishing stub that sends `authorization: Bearer <token>` (none if empty)."""

    def __init__(self, stub: publishing_pb2_grpc.PublishingStub, token: str) -> None:
        self.raw = stub
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def call(self, method: str, request: object) -> object:
        """A unary call, or a server stream drained to its end (its messages as a list)."""
        multi = getattr(self.raw, method)
        result = multi(request, metadata=self.metadata, timeout=10)
        if hasattr(result, "__aiter__"):
            return [item async for item in result]
        return await result


@contextlib.asynccontextmanager
async def secure_coordinator(
    tmp_path: Path,
    *,
    policy: AccessPolicy | None = None,
    pki: Pki | None = None,
    mutual: bool = False,
    client: str = "",
    db: str = "memory://",
    heartbeat_interval_s: float = 1.0,
    lease_ttl_s: float = 3.0,
    bootstrap: bool = True,
) -> AsyncIterator[Rig]:
    """Authentication on (`policy`), a bootstrap admin token (unless `bootstrap` is False: then
    `admin_token` is empty), TLS with `pki` (mutual with `mutual`; the rig's own channels then
    present the client certificate `client`)."""
    policy = policy or AccessPolicy(require_auth=True, bind_client_cert=mutual)
    store = open_store(db)
    await store.open()
    clock = SystemClock()
    lease = LeaseConfig(
        heartbeat_interval_s=heartbeat_interval_s,
        lease_ttl_s=lease_ttl_s,
        restart_grace_s=lease_ttl_s,
        commit_min_left_s=min(2.0, lease_ttl_s / 3),
    )
    coordinator = Coordinator(
        store=store,
        clock=clock,
        config=CoordinatorConfig(lease=lease),
        credentials=Credentials(policy=policy),
    )
    await coordinator.load()
    admin_token = ""
    if bootstrap:
        token_file = tmp_path / "admin.token"
        await bootstrap_admin(store, coordinator.credentials, token_file, clock.now())
        admin_token = token_file.read_text().strip()
    assets = AssetStore(tmp_path / "assets")
    server = grpc.aio.server(
        options=GRPC_SERVER_OPTIONS, interceptors=[OperatorAuth(coordinator.credentials)]
    )
    publishing_pb2_grpc.add_PublishingServicer_to_server(
        PublishingService(coordinator, assets), server
    )
    worker_gateway_pb2_grpc.add_WorkerGatewayServicer_to_server(
        WorkerGatewayService(coordinator, assets), server
    )
    channel_credentials = None
    if pki is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        creds = server_credentials(
            cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca if mutual else None
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
        cert_key = pki.client(client) if client else None
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=cert_key[1].read_bytes() if cert_key else None,
            certificate_chain=cert_key[0].read_bytes() if cert_key else None,
        )
    await server.start()
    rig = Rig(f"127.0.0.1:{port}", coordinator, admin_token, channel_credentials, [])
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(coordinator.run)
            try:
                yield rig
            finally:
                for channel in rig.channels:
                    await channel.close(None)
                await coordinator.stop()
                await server.stop(None)
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
