"""TLS on the gRPC port, in process: operators and workers connect over TLS (and mutual TLS, where
a worker's certificate must name its device), and a plaintext client gets nowhere."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from access_rig import Pki, make_pki, secure_coordinator
from scripted_worker import ScriptedWorker, StreamEnded

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import publishing_pb2_grpc

pytestmark = pytest.mark.anyio
ACME = ("sandbox", "acme")


def client_credentials(pki: Pki, name: str = "") -> grpc.ChannelCredentials:
    cert, key = pki.client(name) if name else (None, None)
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


async def list_posts(address: str, creds: grpc.ChannelCredentials | None, token: str) -> None:
    channel = (
        grpc.aio.insecure_channel(address)
        if creds is None
        else grpc.aio.secure_channel(address, creds)
    )
    async with channel:
        stub = publishing_pb2_grpc.PublishingStub(channel)
        await stub.ListPosts(
            pub.ListPostsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
        )


async def test_operators_and_workers_connect_over_tls_and_plaintext_is_refused(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    async with secure_coordinator(tmp_path, pki=pki) as rig:
        await list_posts(rig.address, client_credentials(pki), rig.admin_token)
        token = await rig.enroll("dev-1", "sandbox:acme")
        async with ScriptedWorker(
            rig.address, "dev-1", capabilities=[ACME], token=token,
            credentials=client_credentials(pki),
        ) as w:  # fmt: skip
            assert (await w.hello()).session_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_posts(rig.address, None, rig.admin_token)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        async with ScriptedWorker(rig.address, "dev-1", capabilities=[ACME], token=token) as w:
            with pytest.raises((StreamEnded, grpc.aio.AioRpcError)) as failed:
                await w.hello()
            error = failed.value
            if isinstance(error, StreamEnded):
                code = error.code
            else:
                assert isinstance(error, grpc.aio.AioRpcError)
                code = error.code()
            assert code == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_needs_a_client_certificate_naming_the_device(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", clients=["ops", "dev-1", "dev-2"])
    async with secure_coordinator(tmp_path, pki=pki, mutual=True, client="ops") as rig:
        await list_posts(rig.address, client_credentials(pki, "ops"), rig.admin_token)
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # TLS, but no certificate
            await list_posts(rig.address, client_credentials(pki), rig.admin_token)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        token = await rig.enroll("dev-1", "sandbox:acme")
        async with ScriptedWorker(
            rig.address, "dev-1", capabilities=[ACME], token=token,
            credentials=client_credentials(pki, "dev-1"),
        ) as w:  # fmt: skip
            assert (await w.hello()).session_id
        # dev-1's token on dev-2's machine (its certificate) is not dev-1.
        async with ScriptedWorker(
            rig.address, "dev-1", capabilities=[ACME], token=token,
            credentials=client_credentials(pki, "dev-2"),
        ) as w:  # fmt: skip
            with pytest.raises(StreamEnded) as ended:
                await w.hello()
            assert ended.value.code == grpc.StatusCode.PERMISSION_DENIED
            assert "certificate does not name device 'dev-1'" in ended.value.details
