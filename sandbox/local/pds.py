"""The Bluesky reference PDS (and an in-memory PLC) as a process on 127.0.0.1. `make pds`
installs its node_modules into the user's cache; this module finds them by the same rule
(`pds_modules()`), starts sandbox/pds/run.mjs, and stops it by its PID.

    with PdsServer(workdir, rate_limits=True) as pds:
        pds.url                                           # the PDS (base_url)
        alice = pds.create_account("alice.test", "pw")    # -> PdsAccount(did, handle, ...)
        pds.create_app_password(alice)                    # "xxxx-xxxx-xxxx-xxxx"
        pds.list_records(alice.did)                       # app.bsky.feed.post records
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from sandbox.local import LocalProcess, LocalServerError, wait_for

PDS_DIR = Path(__file__).resolve().parent.parent / "pds"
READY_TIMEOUT_S = 30.0
POST_COLLECTION = "app.bsky.feed.post"


def pds_modules() -> Path:
    """Where `make pds` put node_modules for the current package-lock.json."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256((PDS_DIR / "package-lock.json").read_bytes()).hexdigest()[:16]
    return cache / "postroom" / f"pds-{digest}" / "node_modules"


def pds_missing() -> str | None:
    """Why the PDS cannot run here (None: it can)."""
    if shutil.which("node") is None:
        return "node is not installed (apt-get install nodejs npm, then make pds)"
    if not (pds_modules().parent / ".installed").exists():
        return f"the Bluesky PDS is not installed in {pds_modules().parent}: run `make pds`"
    return None


@dataclass(frozen=True)
class PdsAccount:
    did: str
    handle: str
    email: str
    password: str
    access_jwt: str


class PdsServer(LocalProcess):
    name = "the PDS"

    def __init__(self, workdir: Path, *, rate_limits: bool = False) -> None:
        super().__init__(workdir / "pds.out")  # not *.log: the platform rig greps those
        self.workdir = workdir
        self.rate_limits = rate_limits
        self.url = ""
        self.admin_password = ""

    # ---- process -------------------------------------------------------------------------

    def start(self) -> None:
        missing = pds_missing()
        if missing is not None:
            raise LocalServerError(missing)
        modules = pds_modules()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "ready.json"
        ready.unlink(missing_ok=True)
        argv = [
            "node", str(PDS_DIR / "run.mjs"), "--modules", str(modules),
            "--data", str(self.workdir / "data"), "--ready", str(ready),
        ]  # fmt: skip
        if self.rate_limits:
            argv.append("--rate-limits")
        self.spawn(argv)

        def started() -> dict[str, Any] | None:
            self.check_running()
            if not ready.exists():
                return None
            info: dict[str, Any] = json.loads(ready.read_text())
            return info

        info = wait_for("the PDS to be ready", started, READY_TIMEOUT_S)
        self.url = str(info["url"])
        self.admin_password = str(info["adminPassword"])

    # ---- the PDS's own API, as a client would call it --------------------------------------

    def xrpc(self, method: str, nsid: str, **kwargs: Any) -> httpx.Response:
        return self._http.request(method, f"{self.url}/xrpc/{nsid}", **kwargs)

    def create_account(self, handle: str, password: str, *, email: str = "") -> PdsAccount:
        email = email or f"{handle.split('.')[0]}@example.com"
        answer = self.xrpc(
            "POST",
            "com.atproto.server.createAccount",
            json={"handle": handle, "email": email, "password": password},
        )
        if answer.is_error:
            raise LocalServerError(f"createAccount {handle}: {answer.status_code} {answer.text}")
        body = answer.json()
        return PdsAccount(body["did"], body["handle"], email, password, body["accessJwt"])

    def create_app_password(self, account: PdsAccount, name: str = "postroom") -> str:
        answer = self.xrpc(
            "POST",
            "com.atproto.server.createAppPassword",
            json={"name": name},
            headers={"Authorization": f"Bearer {account.access_jwt}"},
        )
        answer.raise_for_status()
        password: str = answer.json()["password"]
        return password

    def take_down(self, account: PdsAccount) -> None:
        """What a moderator's takedown does to the account (com.atproto.admin)."""
        answer = self.xrpc(
            "POST",
            "com.atproto.admin.updateSubjectStatus",
            json={
                "subject": {"$type": "com.atproto.admin.defs#repoRef", "did": account.did},
                "takedown": {"applied": True, "ref": "postroom-test"},
            },
            auth=("admin", self.admin_password),
        )
        answer.raise_for_status()

    def list_records(self, did: str, collection: str = POST_COLLECTION) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        cursor = ""
        while True:
            params = {"repo": did, "collection": collection, "limit": "100"}
            if cursor:
                params["cursor"] = cursor
            answer = self.xrpc("GET", "com.atproto.repo.listRecords", params=params)
            answer.raise_for_status()
            page = answer.json()
            records += page["records"]
            cursor = page.get("cursor", "")
            if not cursor or not page["records"]:
                return records

    def get_record(self, uri: str) -> dict[str, Any] | None:
        """The record at an at:// URI, or None when the PDS has none there."""
        did, collection, rkey = uri.removeprefix("at://").split("/")
        answer = self.xrpc(
            "GET",
            "com.atproto.repo.getRecord",
            params={"repo": did, "collection": collection, "rkey": rkey},
        )
        if answer.status_code == 400 and answer.json().get("error") == "RecordNotFound":
            return None
        answer.raise_for_status()
        record: dict[str, Any] = answer.json()
        return record

    def blob(self, did: str, cid: str) -> bytes:
        answer = self.xrpc("GET", "com.atproto.sync.getBlob", params={"did": did, "cid": cid})
        answer.raise_for_status()
        return answer.content
