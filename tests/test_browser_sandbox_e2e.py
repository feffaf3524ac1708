"""Browser workers against the sandbox's composer sites (`postroom sandbox`: /web/x and
/web/instagram), end to end: the sandbox, the coordinator and browser workers (`--kind browser`)
as processes, headless Chromium publishing with the bundled playbooks sandbox-x and
sandbox-instagram.

Asserted is what a user sees: the job's status, error and steps, the proof screenshots (real PNGs
judged by the post's own pixels: MARK's red), and the posts the site holds (the sandbox's record:
never a second post). Each scenario has an account of its own, so no two tests share a fault.
"""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from browser_apps import CONFIG, MARK, BrowserAppRig, red_pixels, require_chromium
from PIL import Image
from platform_rig import Account, PlatformRig
from playwright.sync_api import Page, sync_playwright
from polling import wait_until

from postroom.v1 import types_pb2 as pb
from postroom_cli.accountsfile import render_accounts
from postroom_cli.cluster import Child
from sandbox.admin import FaultKindName, SandboxAdmin

CONFIRM_TIMEOUT_S = 10
# accounts on the main worker w1; `kill` is served by a worker of its own (it gets SIGKILLed)
X_ACCOUNTS = (
    "pub",
    "wall",
    "renamed",
    "challenged",
    "limited",
    "doubt",
    "par_a",
    "par_b",
    "serial",
)
IG_ACCOUNTS = ("confirm", "timeout")
KILL = "kill"
# The kill test's lease: a 4 s margin and a 3.2 s bound for the submit (tests/browser_apps.py).
KILL_LEASE_TTL_S = 20.0
PHOTO = "photo.jpg"
HEADER_PX = 60  # below the sites' nav bars
DEADLINE_S = 90.0  # generous: Chromium on two shared cores


@dataclasses.dataclass
class Env:
    rig: BrowserAppRig
    admin: SandboxAdmin
    sandbox_url: str

    def base(self, platform: str) -> str:
        return f"{self.sandbox_url}/web/{platform}"

    def posts(self, platform: str, account: str) -> list[str]:
        return [p["text"] for p in self.admin.posts(platform=platform, account=account)]

    def publish_under_page_fault(
        self, kind: FaultKindName, account: str, text: str, status: pb.JobStatus.ValueType
    ) -> pb.Job:
        """Publish `text` to x:`account` while every page load meets `kind`; the job once it
        reaches `status` (the faults are cleared either way)."""
        self.admin.inject(kind, platform="x", account=account, count=20)
        try:
            post_id = self.rig.publish(text, [f"x:{account}"])
            return self.rig.wait_status(post_id, status, DEADLINE_S)
        finally:
            self.admin.clear_faults()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "postroom_cli"]
        argv += ["--coordinator", self.rig.cluster.coordinator_address, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def entry(base_url: str, platform: str, account: str) -> Account:
    """A browser account: a playbook, no credentials (its login is in its profile)."""
    return Account(platform, account, base_url, {}, {"playbook": f"sandbox-{platform}"})


def log_in_x(account: str) -> Callable[[Page], None]:
    def fill(page: Page) -> None:
        page.fill('input[autocomplete="username"]', account)
        page.fill('input[name="password"]', "any password")
        page.click("[data-testid=LoginForm_Login_Button]")

    return fill


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_chromium()
    workdir = tmp_path_factory.mktemp("browser-sandbox")
    rig = BrowserAppRig(workdir)
    admin: SandboxAdmin | None = None
    rig.cluster.config = dataclasses.replace(
        CONFIG,
        coordinator_args=("--retry-max", "1", "--confirm-timeout-s", str(CONFIRM_TIMEOUT_S)),
    )
    try:
        url = rig.cluster.start_sandbox()
        admin = rig.cluster.sandbox_admin()
        env = Env(rig, admin, url)
        image = Image.new("RGB", (96, 64), (30, 120, 200))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        (rig.media_dir / PHOTO).write_bytes(buffer.getvalue())
        accounts = [entry(env.base("x"), "x", a) for a in X_ACCOUNTS]
        accounts += [entry(env.base("instagram"), "instagram", a) for a in IG_ACCOUNTS]
        save_logins(env, [*((a.platform, a.account) for a in accounts), ("x", KILL)])
        rig.start_browser(accounts)
        yield env
    finally:
        if admin is not None:
            admin.close()
        rig.stop()


def save_logins(env: Env, accounts: list[tuple[str, str]]) -> None:
    """Log each account in through the site's login form and keep its session cookie as the
    account's profile, in the storage-state shape `postroom browser-login` leaves behind."""
    forms = {
        "x": ("/i/flow/login", "text"),
        "instagram": ("/accounts/login/", "username"),
    }
    for platform, account in accounts:
        path, field = forms[platform]
        with httpx.Client(base_url=env.base(platform)) as http:
            answer = http.post(path, data={field: account, "password": "any password"})
        assert answer.status_code == 303, answer.text
        [cookie] = http.cookies.jar
        state = {
            "cookies": [
                {
                    "name": cookie.name,
                    "value": cookie.value,
                    "domain": cookie.domain.removesuffix(".local"),
                    "path": cookie.path,
                    "expires": float(cookie.expires or -1),
                    "httpOnly": True,
                    "secure": False,
                    "sameSite": "Lax",
                }
            ],
            "origins": [],
        }
        profile = env.rig.state_file(platform, account)
        profile.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        profile.write_text(json.dumps(state))
        profile.chmod(0o600)


def run_steps(job: pb.Job, run: int = -1) -> list[str]:
    return list(dict.fromkeys(line.step for line in job.runs[run].logs))


# Publishing ------------------------------------------------------------------------------------


def test_x_post_with_a_photo_publishes_once_with_an_after_publish_proof(env: Env) -> None:
    text = f"Harbour at dusk {MARK}"
    post_id = env.rig.publish(text, ["x:pub"], media=[PHOTO])
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, DEADLINE_S)

    [recorded] = env.admin.posts(platform="x", account="pub")
    assert recorded["text"] == text and recorded["media"][0].startswith(f"{PHOTO}#sha256:")
    assert (job.result_post_id, job.result_url) == (recorded["id"], recorded["url"])
    steps = run_steps(job)
    for name in ("open_composer", "attach_media", "type_text", "submit", "commit"):
        assert name in steps, steps
    assert steps.index("type_text") < steps.index("submit") < steps.index("commit")
    # The page after the submit: the toast and the sent post, MARK and all.
    proof = env.rig.screenshot(job, "after_publish")
    assert red_pixels(proof, below=HEADER_PX) > 100


def test_instagram_waits_for_confirm_then_shares_once(env: Env) -> None:
    text = f"Boats {MARK}"
    post_id = env.rig.cluster.publish(
        env.rig.api, text, ["instagram:confirm"], media=[PHOTO], require_confirm=True
    )
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_AWAITING_CONFIRM, DEADLINE_S)
    assert env.posts("instagram", "confirm") == []  # the worker waits: nothing shared yet
    confirmed = env.cli("job", "confirm", job.id)
    assert confirmed.returncode == 0, confirmed.stderr
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, DEADLINE_S)
    assert env.posts("instagram", "confirm") == [text]
    assert job.result_url == f"{env.base('instagram')}/p/{job.result_post_id}/"
    # Before the confirm the page showed "Share this post?" with the caption in it.
    before = env.rig.screenshot(job, "before_confirm")
    assert red_pixels(before, below=HEADER_PX) > 100
    assert red_pixels(env.rig.screenshot(job, "after_publish"), below=HEADER_PX) > 100


def test_instagram_not_confirmed_in_time_is_released_and_never_posted(env: Env) -> None:
    post_id = env.rig.cluster.publish(
        env.rig.api, f"Never shared {MARK}", ["instagram:timeout"], media=[PHOTO],
        require_confirm=True,
    )  # fmt: skip
    env.rig.wait_status(post_id, pb.JOB_STATUS_AWAITING_CONFIRM, DEADLINE_S)
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_FAILED, DEADLINE_S + CONFIRM_TIMEOUT_S)
    assert "not confirmed" in job.last_error, job.last_error
    assert env.posts("instagram", "timeout") == []


# Logins and changed pages ---------------------------------------------------------------------


def test_logged_out_needs_login_then_browser_login_and_a_check_publish(env: Env) -> None:
    env.admin.set_logged_in("x", "wall", False)  # every session of the account ends
    post_id = env.rig.publish(f"After the login {MARK}", ["x:wall"])
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN, DEADLINE_S)
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert env.posts("x", "wall") == []

    with sync_playwright() as playwright:
        printed = env.rig.browser_login(playwright, "x", "wall", log_in_x("wall"))
    assert "logged in: x:wall" in printed
    checked = env.cli("device", "check-login", "w1", "--platform", "x", "--account", "wall")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, DEADLINE_S)
    assert env.posts("x", "wall") == [f"After the login {MARK}"]


def test_a_renamed_selector_fails_ui_changed_naming_it(env: Env) -> None:
    job = env.publish_under_page_fault(
        "renamed_selector", "renamed", f"Button moved {MARK}", pb.JOB_STATUS_FAILED
    )
    assert job.last_error_class == pb.ERROR_CLASS_UI_CHANGED, env.rig.step_logs(job)
    assert "[data-testid=tweetButton]" in job.last_error
    assert job.runs[-1].failed_step == "post_button ([data-testid=tweetButton])"
    # The page as the worker left it: the composer holding the typed text.
    assert red_pixels(env.rig.screenshot(job, "on_failure"), below=HEADER_PX) > 100
    assert env.posts("x", "renamed") == []


def test_a_2fa_challenge_needs_a_person(env: Env) -> None:
    job = env.publish_under_page_fault(
        "challenge", "challenged", f"Behind a challenge {MARK}", pb.JOB_STATUS_NEEDS_LOGIN
    )
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "challenge" in job.last_error, job.last_error
    assert env.posts("x", "challenged") == []


def test_a_rate_limited_submit_closes_the_gate_then_posts_once(env: Env) -> None:
    env.admin.inject("rate_limit", platform="x", account="limited", retry_after_seconds=3)
    post_id = env.rig.publish(f"Slowly now {MARK}", ["x:limited"])
    gate = wait_until("the gate to close", lambda: env.rig.closed_gate("x", "limited"), DEADLINE_S)
    assert "Rate limit exceeded" in gate.reason, gate.reason  # the site's own message
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, DEADLINE_S)
    assert job.rate_limited_count == 1
    assert env.posts("x", "limited") == [f"Slowly now {MARK}"]


# Never twice -----------------------------------------------------------------------------------


def test_a_submit_that_never_answers_is_in_doubt_then_found_not_reposted(env: Env) -> None:
    env.admin.inject("accept_then_hang", platform="x", account="doubt", hang_seconds=120)
    text = f"Did it go? {MARK}"
    post_id = env.rig.publish(text, ["x:doubt"])
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, DEADLINE_S)
    assert env.posts("x", "doubt") == [text]
    assert len(job.runs) >= 2, env.rig.step_logs(job)
    assert job.runs[0].committed and job.runs[0].outcome == "retry"
    assert "verify" in run_steps(job), env.rig.step_logs(job)
    assert job.result_url == env.admin.posts(platform="x", account="doubt")[0]["url"]


def test_worker_killed_after_the_submit_left_is_verified_not_reposted(env: Env) -> None:
    # A coordinator of its own (same sandbox site, same logins) with a shorter lease: the rescue
    # waits out the killed worker's lease, and the module's 40 s one would be most of the test.
    config = dataclasses.replace(CONFIG, lease_ttl_s=KILL_LEASE_TTL_S)
    rig = PlatformRig(env.rig.workdir / "kill", config)
    accounts = rig.workdir / "accounts-kill.toml"
    text, _ = render_accounts([entry(env.base("x"), "x", KILL)])
    accounts.write_text(text)

    def start(device: str) -> Child:
        child = rig.cluster.start_worker(
            device,
            platforms=(),
            accounts=accounts,
            kind="browser",
            extra=["--profiles-dir", str(env.rig.profiles_dir)],
        )
        rig.cluster.wait_online([device])
        return child

    with rig:
        rig.cluster.start_coordinator()
        rig.client = rig.cluster.client()
        first = start("kill-w1")
        env.admin.inject("accept_then_hang", platform="x", account=KILL, hang_seconds=120)
        text = f"Killed mid-air {MARK}"
        post_id = rig.publish(text, [f"x:{KILL}"])
        wait_until("the submit to reach the site", lambda: env.posts("x", KILL), DEADLINE_S)
        first.kill()
        start("kill-w2")
        job = rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED, DEADLINE_S)
        assert env.posts("x", KILL) == [text]
        rescue = job.runs[-1]
        assert rescue.device_id == "kill-w2", rig.step_logs(job)
        assert "verify" in [line.step for line in rescue.logs], rig.step_logs(job)
        assert rig.cluster.workers["kill-w2"].stop() == 0


# Slots -----------------------------------------------------------------------------------------


def test_two_accounts_run_at_once_two_jobs_of_one_account_never(env: Env) -> None:
    wait_until("no page held", lambda: env.admin.stats()["hanging"] == 0, DEADLINE_S)
    for account in ("par_a", "par_b"):
        env.admin.inject("slow_page", platform="x", account=account, hang_seconds=8)
    both = env.rig.publish(f"Side by side {MARK}", ["x:par_a", "x:par_b"])
    # Both accounts' composer pages are loading at the same moment: two contexts at work.
    wait_until("both accounts' pages at once", lambda: env.admin.stats()["hanging"] == 2, 60)
    done = pb.JOB_STATUS_SUCCEEDED
    wait_until(
        "both jobs to succeed",
        lambda: all(job.status == done for job in env.rig.jobs(both)),
        DEADLINE_S,
    )
    assert env.posts("x", "par_a") == env.posts("x", "par_b") == [f"Side by side {MARK}"]

    env.admin.inject("slow_page", platform="x", account="serial", hang_seconds=3, count=2)
    first = env.rig.publish(f"First of two {MARK}", ["x:serial"])
    second = env.rig.publish(f"Second of two {MARK}", ["x:serial"])
    most = 0

    def both_done() -> bool:
        nonlocal most
        most = max(most, env.admin.stats()["hanging"])
        return all(env.rig.job(p).status == pb.JOB_STATUS_SUCCEEDED for p in (first, second))

    wait_until("the account's two jobs to finish", both_done, DEADLINE_S)
    assert most == 1, "two jobs of one account had pages loading at once"
    expected = [f"First of two {MARK}", f"Second of two {MARK}"]
    assert sorted(env.posts("x", "serial")) == sorted(expected)
