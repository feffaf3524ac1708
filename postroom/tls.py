"""TLS for the gRPC port: server and channel credentials from PEM files, read once at the edge.

Shared by the coordinator (server), the workers and the CLI (clients). The policy is the same
everywhere: plaintext only to and from loopback, or when asked for in so many words.

    creds = server_credentials(cert=Path("tls.crt"), key=Path("tls.key"), client_ca=None)
    channel = aio_channel("coord.example:50051", ClientTls(ca=Path("ca.crt")))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from postroom.address import is_loopback_host, without_scheme

ENV_CA = "POSTROOM_CA"
ENV_CLIENT_CERT = "POSTROOM_TLS_CERT"
ENV_CLIENT_KEY = "POSTROOM_TLS_KEY"


class TlsError(Exception):
    """A TLS setting cannot be used; the message names the flag and what to fix."""


def target_host(target: str) -> str:
    """The host of a gRPC target `HOST:PORT` (`[::1]:50051` for IPv6, `dns:///HOST:PORT`)."""
    target = without_scheme(target)
    host, _, _ = target.rpartition(":")
    return host or target


def read_pem(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{flag} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN " not in data:
        raise TlsError(f"{flag} {path}: not a PEM file (expected '-----BEGIN ...')")
    return data


def server_credentials(*, cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """With `client_ca`, every client must present a certificate signed by it (mutual TLS)."""
    pair = (read_pem(key, "--tls-key"), read_pem(cert, "--tls-cert"))
    roots = read_pem(client_ca, "--tls-client-ca") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=roots, require_client_auth=bool(roots)
    )


@dataclass(frozen=True, slots=True)
class ClientTls:
    """How a client dials: `ca` (else the system's roots), and a certificate for mutual TLS."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    # Plaintext to a non-loopback address, asked for in so many words.
    insecure_plaintext: bool = False

    @classmethod
    def from_env(
        cls,
        *,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        insecure_plaintext: bool = False,
    ) -> ClientTls:
        """Flags win over POSTROOM_CA, POSTROOM_TLS_CERT and POSTROOM_TLS_KEY."""

        def env(name: str) -> Path | None:
            value = os.environ.get(name, "").strip()
            return Path(value) if value else None

        return cls(
            ca=ca or env(ENV_CA),
            cert=cert or env(ENV_CLIENT_CERT),
            key=key or env(ENV_CLIENT_KEY),
            insecure_plaintext=insecure_plaintext,
        )

    @property
    def wanted(self) -> bool:
        return self.ca is not None or self.cert is not None

    def credentials(self, target: str) -> grpc.ChannelCredentials | None:
        """None means plaintext: to loopback without any TLS setting, or when asked for."""
        if (self.cert is None) != (self.key is None):
            raise TlsError(
                "--tls-cert and --tls-key go together (a client certificate and its key)"
            )
        if not self.wanted:
            if self.insecure_plaintext or is_loopback_host(target_host(target)):
                return None
            # Beyond loopback nothing travels in the clear by default: TLS with the system's
            # root certificates (a server with a private CA needs --ca).
            return grpc.ssl_channel_credentials()
        if self.insecure_plaintext:
            raise TlsError("--insecure-plaintext contradicts --ca / --tls-cert: choose one")
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca, "--ca") if self.ca else None,
            private_key=read_pem(self.key, "--tls-key") if self.key else None,
            certificate_chain=read_pem(self.cert, "--tls-cert") if self.cert else None,
        )


def aio_channel(
    target: str,
    tls: ClientTls,
    *,
    options: Sequence[tuple[str, int | str]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    creds = tls.credentials(target)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, creds, options=options, interceptors=interceptors)


def sync_channel(
    target: str, tls: ClientTls, *, options: Sequence[tuple[str, int | str]] = ()
) -> grpc.Channel:
    creds = tls.credentials(target)
    if creds is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, creds, options=options)
