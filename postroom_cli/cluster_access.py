"""The credentials of a LocalCluster that runs with authentication on (`ClusterConfig(auth=True)`,
what `postroom demo` does): nothing to set up by hand.

- the coordinator writes its first admin token (`--bootstrap-admin-token-file`); the cluster's
  clients use it, and a second token with the approver role approves what they write (four
  eyes, as a deployment would run it);
- every worker is enrolled for exactly the accounts it serves before it starts, and gets its
  device token through its environment (POSTROOM_DEVICE_TOKEN), never its command line;
- the sandbox's admin API gets a random token, which `sandbox_admin()` clients send.

Secrets live in files of mode 0600 in the cluster's work directory and in memory; they are never
printed.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from postroom.v1 import access_pb2 as ac
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient

APPROVER_NAME = "cluster-approver"


def write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{secret}\n".encode())
    finally:
        os.close(fd)


def served_accounts(platforms: Iterable[str], accounts: Path | None) -> list[pb.Target]:
    """What a worker will claim in its Hello: `--platform P[:A]` (no account: every account),
    and the accounts of its accounts file."""
    out: list[pb.Target] = []
    for spec in platforms:
        platform, _, account = spec.partition(":")
        out.append(pb.Target(platform=platform.strip(), account=account.strip() or "*"))
    if accounts is not None:
        with open(accounts, "rb") as f:
            for entry in tomllib.load(f).get("account", []):
                out.append(pb.Target(platform=entry["platform"], account=entry["account"]))
    return out


class ClusterAccess:
    def __init__(self, workdir: Path) -> None:
        self.admin_token_file = workdir / "admin.token"
        self.sandbox_admin_token_file = workdir / "sandbox-admin.token"
        self.sandbox_admin_token = ""
        self._devices: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {}
        self._approver = ""

    def prepare_sandbox(self) -> Path:
        """A fresh admin token for the sandbox, in a file for its --admin-token-file."""
        if not self.sandbox_admin_token:
            self.sandbox_admin_token = secrets.token_urlsafe(24)
            self.sandbox_admin_token_file.parent.mkdir(parents=True, exist_ok=True)
            write_secret(self.sandbox_admin_token_file, self.sandbox_admin_token)
        return self.sandbox_admin_token_file

    @property
    def admin_token(self) -> str:
        """The coordinator's bootstrap admin token ("" before its first start)."""
        try:
            return self.admin_token_file.read_text().strip()
        except FileNotFoundError:
            return ""

    def approver_token(self, client: PublishingClient) -> str:
        if not self._approver:
            made = client.create_token(APPROVER_NAME, ac.ROLE_APPROVER)
            self._approver = made.secret
        return self._approver

    def device_token(
        self, client: PublishingClient, device_id: str, accounts: Sequence[pb.Target]
    ) -> str:
        """Enrolled once per device; again (rotated) when it is to serve other accounts."""
        wanted = tuple(sorted({(a.platform, a.account) for a in accounts}))
        known = self._devices.get(device_id)
        if known is not None and known[1] == wanted:
            return known[0]
        made = client.enroll_device(device_id, list(accounts), rotate=known is not None)
        self._devices[device_id] = (made.secret, wanted)
        return made.secret

    def known_secrets(self) -> dict[str, str]:
        """Every secret this cluster made or was given, by what it is (for leak checks)."""
        found = {
            "admin token": self.admin_token,
            "approver token": self._approver,
            "sandbox admin token": self.sandbox_admin_token,
        }
        found |= {f"device token of {d}": token for d, (token, _) in self._devices.items()}
        return {what: secret for what, secret in found.items() if secret}
