"""mastodon-mock (PyPI) as a process on 127.0.0.1.

    with MastodonMock(workdir, users={"alice": "alice-token"}) as mock:
        mock.url                                          # the instance URL (base_url)
        mock.fault("POST", "/api/v1/statuses", status=503, count=1)   # its fault endpoint
        mock.statuses("alice-token")                      # what the account has, newest first

Each user is a seeded Mastodon account whose bearer token is the given string (mastodon-mock
takes its tokens from the seed in its config file). The port is picked free by the OS just
before the start (mastodon-mock cannot report a port 0 back); readiness is polled, and the
process is stopped by its PID.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from sandbox.local import LocalProcess, LocalServerError, free_port, wait_for

READY_TIMEOUT_S = 20.0
ADMIN = "mock-admin"  # a seeded admin account, for moderation actions (suspend)


def mastodon_mock_missing() -> str | None:
    """Why mastodon-mock cannot run here (None: it can)."""
    if importlib.util.find_spec("mastodon_mock") is None:
        return "mastodon-mock is not installed (pip install mastodon-mock; make install has it)"
    return None


def _toml_str(value: str) -> str:
    return json.dumps(value)


class MastodonMock(LocalProcess):
    name = "mastodon-mock"

    def __init__(self, workdir: Path, users: Mapping[str, str]) -> None:
        super().__init__(workdir / "mastodon-mock.out")  # not *.log: the rig greps those
        self.workdir = workdir
        self.users = {**users, ADMIN: "mock-admin-token"}
        self.port = 0
        self.url = ""

    # ---- process -------------------------------------------------------------------------

    def start(self) -> None:
        missing = mastodon_mock_missing()
        if missing is not None:
            raise LocalServerError(missing)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = self.workdir / "mastodon-mock.toml"
        lines = [
            f"domain = {_toml_str(f'127.0.0.1:{self.port}')}",
            'url_scheme = "http"',
            f"media_storage_path = {_toml_str(str(self.workdir / 'media'))}",
            "[database]",
            'path = ":memory:"',
        ]
        for username, token in self.users.items():
            lines += ["[[seed.accounts]]", f"username = {_toml_str(username)}"]
            lines += [f"access_token = {_toml_str(token)}"]
            if username == ADMIN:
                lines.append('role = "admin"')
        config.write_text("\n".join(lines) + "\n")
        argv = [
            sys.executable, "-m", "mastodon_mock", "serve", "--config", str(config),
            "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
        ]  # fmt: skip
        self.spawn(argv, cwd=self.workdir)
        wait_for("mastodon-mock to answer", self._ready, READY_TIMEOUT_S)

    def _ready(self) -> bool:
        self.check_running()
        try:
            return self._http.get(f"{self.url}/api/v1/instance").status_code == 200
        except httpx.TransportError:
            return False

    # ---- the API, as a test looks at it --------------------------------------------------

    def _get(self, token: str, path: str, **params: str) -> Any:
        response = self._http.get(
            self.url + path, params=params, headers={"Authorization": f"Bearer {token}"}
        )
        response.raise_for_status()
        return response.json()

    def account_id(self, token: str) -> str:
        account_id: str = self._get(token, "/api/v1/accounts/verify_credentials")["id"]
        return account_id

    def statuses(self, token: str) -> list[dict[str, Any]]:
        """The account's statuses, newest first (one page of 40 is plenty for a test)."""
        path = f"/api/v1/accounts/{self.account_id(token)}/statuses"
        statuses: list[dict[str, Any]] = self._get(token, path, limit="40")
        return statuses

    def source_text(self, token: str, status_id: str) -> str:
        text: str = self._get(token, f"/api/v1/statuses/{status_id}/source")["text"]
        return text

    def fault(
        self,
        method: str,
        path: str,
        *,
        effect: str = "status",
        status: int | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        count: int | None = 1,
    ) -> dict[str, Any]:
        """Add a rule at mastodon-mock's own fault endpoint (`POST /api/v1/_mock/faults`)."""
        spec: dict[str, Any] = {"type": effect}
        if status is not None:
            spec["status"] = status
        if body is not None:
            spec["body"] = body
        if headers:
            spec["headers"] = dict(headers)
        rule = {"match": {"methods": [method], "path": path}, "effect": spec, "count": count}
        response = self._http.post(f"{self.url}/api/v1/_mock/faults", json=rule)
        response.raise_for_status()
        added: dict[str, Any] = response.json()
        return added

    def faults(self) -> list[dict[str, Any]]:
        response = self._http.get(f"{self.url}/api/v1/_mock/faults")
        response.raise_for_status()
        rules: list[dict[str, Any]] = response.json()
        return rules

    def suspend(self, token: str) -> None:
        """Suspend the token's account through the admin API (its login is then disabled)."""
        account_id = self.account_id(token)
        response = self._http.post(
            f"{self.url}/api/v1/admin/accounts/{account_id}/action",
            data={"type": "suspend"},
            headers={"Authorization": f"Bearer {self.users[ADMIN]}"},
        )
        response.raise_for_status()
