"""What the browser e2e tests against real web apps (mastodon-mock's UI, django-spirit) share: a
coordinator and a browser worker as processes (`BrowserAppRig`), logins put into a profile the
way the worker keeps them, `postroom browser-login` driven over CDP, a playbook copy with one
selector renamed, and the screenshots read back from the coordinator.

Screenshots are judged by what a person would see: each test's post carries `MARK` (Noto Color
Emoji's red squares), and `red_pixels` counts that exact red below the sites' headers, where
only the post's own text can put it.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from PIL import Image
from platform_rig import Account, PlatformRig
from playwright.sync_api import Page, Playwright
from polling import wait_until

from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import ClusterConfig

CHROMIUM = "/usr/bin/chromium"
STATE_FILE = "storage-state.json"  # worker/browser/host.py keeps a profile's login there
MARK = "🟥🟥🟥🟥"
RED = (244, 67, 54)  # 🟥 as Noto Color Emoji draws it
JOB_TIMEOUT_S = 60.0  # generous: a browser on two shared cores
LOGIN_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
PAGE_TIMEOUT_MS = 20_000
DEVICE = "w1"
# A lease of 40 s gives the worker an 8 s margin and the submit a 6.4 s bound (0.8 x margin):
# room for a form post on a machine shared by many test runs (an answer later than the bound
# is "in doubt" and found by verify, which these tests would see as a different run).
CONFIG = ClusterConfig(heartbeat_interval_s=1.0, lease_ttl_s=40.0, retry_initial_s=0.3)


def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if os.environ.get("CI"):
        pytest.fail(f"{missing} (CI must run these tests)")
    pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class BrowserAppRig(PlatformRig):
    """A coordinator and one browser worker (`--kind browser`) as processes."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, CONFIG)
        self.profiles_dir = workdir / "profiles"
        self.profiles_dir.mkdir(parents=True, exist_ok=True)
        self.accounts_file = workdir / "accounts.toml"

    def __enter__(self) -> BrowserAppRig:
        return self

    def start_browser(self, accounts: Sequence[Account]) -> None:
        self.start(accounts, worker_args=self.browser_args())

    def browser_args(self) -> tuple[str, ...]:
        return ("--kind", "browser", "--profiles-dir", str(self.profiles_dir))

    def state_file(self, platform: str, account: str) -> Path:
        return self.profiles_dir / platform / account / STATE_FILE

    def save_cookie(self, platform: str, account: str, url: str, name: str, value: str) -> None:
        """A profile holding one session cookie for `url`'s host (Playwright's storage-state
        format, as the worker reads it)."""
        host = url.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
        cookie = {
            "name": name, "value": value, "domain": host, "path": "/", "expires": -1,
            "httpOnly": True, "secure": False, "sameSite": "Lax",
        }  # fmt: skip
        self._write_state(platform, account, {"cookies": [cookie], "origins": []})

    def save_local_storage(
        self, platform: str, account: str, origin: str, items: dict[str, str]
    ) -> None:
        """A profile holding `items` in `origin`'s localStorage (where single-page apps keep
        their login)."""
        stored = [{"name": k, "value": v} for k, v in items.items()]
        state: dict[str, object] = {
            "cookies": [],
            "origins": [{"origin": origin, "localStorage": stored}],
        }
        self._write_state(platform, account, state)

    def _write_state(self, platform: str, account: str, state: dict[str, object]) -> None:
        path = self.state_file(platform, account)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(json.dumps(state))
        path.chmod(0o600)

    def wait_job(
        self, post_id: str, what: str, probe: Callable[[pb.Job], bool], timeout_s: float = 0
    ) -> pb.Job:
        return super().wait_job(post_id, what, probe, timeout_s or JOB_TIMEOUT_S)

    def wait_status(
        self, post_id: str, status: pb.JobStatus.ValueType, timeout_s: float = 0
    ) -> pb.Job:
        return super().wait_status(post_id, status, timeout_s or JOB_TIMEOUT_S)

    def explain(self, job: pb.Job) -> str:
        """Each run's outcome and step logs, for an assertion's message."""
        lines = [f"job {job.id}: {pb.JobStatus.Name(job.status)} {job.last_error}"]
        for run in job.runs:
            cls = pb.ErrorClass.Name(run.error_class)
            lines.append(f"run #{run.attempt} on {run.device_id}: {run.outcome} {cls} {run.error}")
            lines += [f"  {line.step}: {line.message}" for line in run.logs]
        return "\n".join(lines)

    # ---- screenshots -----------------------------------------------------------------------

    def screenshot(self, job: pb.Job, label: str) -> Image.Image:
        """The job's screenshot with `label` (the latest), read back from the coordinator."""
        shots = [s for run in job.runs for s in run.screenshots if s.label == label]
        taken = [s.label for r in job.runs for s in r.screenshots]
        assert shots, f"no {label} screenshot (taken: {taken}):\n{self.explain(job)}"
        data = b"".join(chunk.data for chunk in self.api.get_asset(shots[-1].asset_id))
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{label} is not a PNG"
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")

    # ---- a person's login ------------------------------------------------------------------

    def browser_login(
        self,
        playwright: Playwright,
        platform: str,
        account: str,
        log_in: Callable[[Page], None],
    ) -> str:
        """Run `postroom browser-login --headless` for the account, let `log_in` do on its page
        what a person would, and return what the command printed (it must exit 0)."""
        port = free_port()
        out = self.workdir / f"browser-login-{platform}-{account}.out"
        argv = [
            sys.executable, "-m", "postroom_cli", "browser-login",
            "--platform", platform, "--account", account,
            "--accounts", str(self.accounts_file), "--profiles-dir", str(self.profiles_dir),
            "--headless", "--remote-debugging-port", str(port),
            "--timeout-s", str(int(LOGIN_TIMEOUT_S)),
        ]  # fmt: skip
        with open(out, "wb") as sink:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
        try:
            url = wait_until(
                "browser-login to open its page",
                lambda: _debugging_url(out, proc),
                LOGIN_TIMEOUT_S,
            )
            browser = playwright.chromium.connect_over_cdp(url)
            page = browser.contexts[0].pages[0]
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            log_in(page)
            code = proc.wait(LOGIN_TIMEOUT_S)
        finally:
            if proc.poll() is None:  # SIGTERM first: the command closes its own Chromium
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        printed = out.read_text(errors="replace")
        assert code == 0, f"browser-login exited {code}:\n{printed}"
        return printed


def _debugging_url(out: Path, proc: subprocess.Popen[bytes]) -> str | None:
    found = re.search(r"remote debugging on (http://\S+)", out.read_text(errors="replace"))
    if found:
        return found.group(1)
    if proc.poll() is not None:
        raise AssertionError(f"browser-login exited {proc.returncode}:\n{out.read_text()}")
    return None


def red_pixels(image: Image.Image, *, below: int) -> int:
    """How many pixels below the `below`-th row are MARK's red."""
    region = image.crop((0, below, image.width, image.height))
    histogram = {color: n for n, color in region.getcolors(maxcolors=1 << 24) or []}
    return histogram.get(RED, 0)


def renamed_playbook(bundled: Path, dest: Path, old: str, new: str) -> Path:
    """A copy of a playbook with one selector changed (a data edit, as a site redesign makes
    necessary), its version bumped."""
    text = bundled.read_text(encoding="utf-8")
    line = f'selector = "{old}"'
    assert text.count(line) == 1, f"{bundled} has {line} {text.count(line)} times, not once"
    text = text.replace(line, f'selector = "{new}"')
    text = re.sub(r"(?m)^version = ([0-9]+)$", lambda m: f"version = {int(m[1]) + 1}", text)
    dest.write_text(text, encoding="utf-8")
    return dest


def bundled_playbook(name: str) -> Path:
    import worker.browser

    return Path(worker.browser.__file__).parent / "playbooks" / f"{name}.toml"


def steps(job: pb.Job) -> list[list[str]]:
    """Per run, the steps it logged, in order and without repeats."""
    return [list(dict.fromkeys(line.step for line in run.logs)) for run in job.runs]
