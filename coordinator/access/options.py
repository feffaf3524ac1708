"""The coordinator's security flags, parsed once, and what they mean where it listens.

Secure by default where it is exposed: a coordinator listening beyond loopback serves TLS and
requires operator and device tokens, unless told otherwise in so many words
(`--insecure-plaintext`, `--insecure-no-auth`). On loopback with no tokens it runs open, as
before, and says so in its one security line at start-up.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from coordinator.access.registry import AccessPolicy, Credentials
from postroom.address import is_loopback_host, split_host_port


class ExposureRefused(Exception):
    """The listening address needs a protection that is not configured; the message says which
    flag gives it (one line)."""


def add_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security (see README: Security)")
    g.add_argument("--tls-cert", type=Path, metavar="PATH", help="serve TLS with this certificate")
    g.add_argument("--tls-key", type=Path, metavar="PATH", help="the certificate's private key")
    g.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PATH",
        help="mutual TLS: every client presents a certificate signed by this CA, and a worker's "
        "must name its device id (CN or SAN)",
    )
    g.add_argument(
        "--bootstrap-admin-token-file",
        type=Path,
        metavar="PATH",
        help="when no admin token exists, make one and write it here (mode 0600); turns "
        "authentication on",
    )
    g.add_argument(
        "--require-auth",
        action="store_true",
        help="require operator and device tokens even on loopback before any token exists",
    )
    g.add_argument(
        "--allow-self-approval",
        action="store_true",
        help="let an operator approve a post they created or edited",
    )
    g.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="serve without TLS on an address beyond loopback",
    )
    g.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve without tokens on an address beyond loopback (while no token exists)",
    )


@dataclass(frozen=True, slots=True)
class SecurityOptions:
    exposed: bool = False  # listening beyond loopback
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    bootstrap_admin_token_file: Path | None = None
    require_auth: bool = False
    allow_self_approval: bool = False
    insecure_plaintext: bool = False
    insecure_no_auth: bool = False

    @classmethod
    def from_args(cls, a: argparse.Namespace, listen: str) -> SecurityOptions:
        """Flag combinations that cannot work are ValueErrors (argparse usage errors)."""
        if (a.tls_cert is None) != (a.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if a.tls_client_ca is not None and a.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS)")
        if a.insecure_plaintext and a.tls_cert is not None:
            raise ValueError("--insecure-plaintext contradicts --tls-cert: choose one")
        host, _ = split_host_port(listen)
        return cls(
            exposed=not is_loopback_host(host),
            tls_cert=a.tls_cert,
            tls_key=a.tls_key,
            tls_client_ca=a.tls_client_ca,
            bootstrap_admin_token_file=a.bootstrap_admin_token_file,
            require_auth=a.require_auth,
            allow_self_approval=a.allow_self_approval,
            insecure_plaintext=a.insecure_plaintext,
            insecure_no_auth=a.insecure_no_auth,
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def policy(self) -> AccessPolicy:
        return AccessPolicy(
            require_auth=(
                self.require_auth
                or self.bootstrap_admin_token_file is not None
                or (self.exposed and not self.insecure_no_auth)
            ),
            allow_self_approval=self.allow_self_approval,
            bind_client_cert=self.tls_client_ca is not None,
        )

    def check_transport(self, listen: str) -> None:
        """Before anything is opened: plaintext beyond loopback only when asked for."""
        if self.exposed and not self.tls and not self.insecure_plaintext:
            raise ExposureRefused(
                f"--listen {listen} is beyond loopback: serve TLS (--tls-cert PATH --tls-key "
                "PATH; clients then use --ca), or say --insecure-plaintext"
            )

    def check_auth(self, listen: str, credentials: Credentials) -> None:
        """After the store is loaded: beyond loopback, someone must be able to authenticate."""
        if not self.exposed or self.insecure_no_auth or credentials.has_active_admin():
            return
        raise ExposureRefused(
            f"--listen {listen} is beyond loopback and no admin token exists: give "
            "--bootstrap-admin-token-file PATH (writes the first one), or say --insecure-no-auth"
        )

    def describe(self, credentials: Credentials) -> str:
        """The one start-up line that says how this coordinator is protected."""
        if self.tls_client_ca is not None:
            transport = "mutual TLS"
        elif self.tls:
            transport = "TLS"
        else:
            transport = "plaintext" + (" (--insecure-plaintext)" if self.exposed else " (loopback)")
        if credentials.auth_on:
            who = "operator and device tokens required"
        elif self.exposed:
            who = "NO AUTHENTICATION (--insecure-no-auth): anyone who reaches it may do anything"
        else:
            who = (
                "no authentication: loopback only and no tokens yet, any local process may do "
                "anything (`postroom token create --role admin --name NAME` turns it on)"
            )
        approval = "; self-approval allowed" if self.allow_self_approval else ""
        return f"security: {transport}; {who}{approval}"
