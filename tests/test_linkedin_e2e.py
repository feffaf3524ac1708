"""LinkedIn end to end: coordinator and worker processes (PlatformRig) publishing through the
LinkedIn adapter to the LinkedIn stand-in inside a `postroom sandbox` process. Each scenario has
an account (a LinkedIn member) of its own, so no two tests share a gate, a fault or a token, and
every credential value holds `CANARY`. What is asserted is what a user sees: the job's status and
result, the rate-limit gate, and the posts LinkedIn shows (the stand-in's record, with the text a
reader sees).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from linkedin_standin import StandinAdmin
from platform_rig import CANARY, Account, PlatformRig
from polling import wait_until

from postroom.v1 import types_pb2 as pb
from worker.adapters.png import render_card
from worker.adapters.ratelimit import next_midnight_utc

SCENARIOS = (
    "text",
    "image",
    "refresh",
    "refused",
    "forbidden",
    "duplicate",
    "invalid",
    "unavailable",
    "quota",
    "throttle",
    "doubt",
    "canary",
)
CLIENT_ID = f"{CANARY}-client-id"
CLIENT_SECRET = f"{CANARY}-client-secret"


def member(name: str) -> str:
    return f"urn:li:person:e2e{name}"


def credentials(name: str) -> dict[str, str]:
    return {
        "access_token": f"{CANARY}-{name}-access",
        "refresh_token": f"{CANARY}-{name}-refresh",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }


@dataclass
class Env:
    rig: PlatformRig
    admin: StandinAdmin

    def publish(self, name: str, text: str, media: tuple[str, ...] = ()) -> str:
        return self.rig.publish(text, [f"linkedin:{name}"], media=media)

    def posts(self, name: str) -> list[dict[str, Any]]:
        return self.admin.posts(author=member(name))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    rig = PlatformRig(tmp_path_factory.mktemp("linkedin"))
    admin: StandinAdmin | None = None
    try:
        base_url = f"{rig.cluster.start_sandbox()}/linkedin"
        admin = StandinAdmin(base_url)
        for name in SCENARIOS:
            creds = credentials(name)
            # "refused": LinkedIn no longer knows this account's refresh token.
            refresh = "revoked-elsewhere" if name == "refused" else creds["refresh_token"]
            admin.member(
                member(name),
                access_token=creds["access_token"],
                refresh_token=refresh,
                client_id=CLIENT_ID,
                client_secret=CLIENT_SECRET,
            )
        (rig.media_dir / "pic.png").write_bytes(render_card("launch", ["a picture"]))
        oauth_url = f"{base_url}/oauth/v2/accessToken"
        rig.start(
            [
                Account(
                    "linkedin",
                    name,
                    base_url,
                    credentials(name),
                    {"author": member(name), "oauth_url": oauth_url},
                )
                for name in SCENARIOS
            ]
        )
        yield Env(rig, admin)
    finally:
        if admin is not None:
            admin.close()
        rig.stop()


def test_publishes_text_that_reads_as_written(env: Env) -> None:
    text = "Launch day (v2.0): 50% off *today* only_for [you] — ask @sales <3 #launch ~ C#"

    job = env.rig.wait_status(env.publish("text", text), pb.JOB_STATUS_SUCCEEDED)

    (post,) = env.posts("text")
    assert post["text"] == text and not post["truncated"]
    assert "{hashtag|\\#|launch}" in post["commentary"]
    assert job.result_post_id == post["id"]
    assert job.result_url == f"https://www.linkedin.com/feed/update/{post['id']}/"
    assert post["visibility"] == "PUBLIC" and post["lifecycleState"] == "PUBLISHED"


def test_publishes_an_image(env: Env) -> None:
    job = env.rig.wait_status(
        env.publish("image", "A picture post", media=("pic.png",)), pb.JOB_STATUS_SUCCEEDED
    )

    (post,) = env.posts("image")
    assert post["content"]["media"]["id"].startswith("urn:li:image:")
    assert job.result_post_id == post["id"]
    prepare = [line.message for run in job.runs for line in run.logs if line.step == "prepare"]
    assert any("1 image(s) uploaded" in message for message in prepare)


def test_an_expired_token_is_refreshed_and_the_post_goes_out(env: Env) -> None:
    env.admin.fault(kind="auth", op="create", member=member("refresh"))

    job = env.rig.wait_status(env.publish("refresh", "After a refresh"), pb.JOB_STATUS_SUCCEEDED)

    assert job.attempt == 1
    assert [p["text"] for p in env.posts("refresh")] == ["After a refresh"]
    assert env.admin.requests(member("refresh"))["token"] == 1


def test_a_refused_refresh_needs_a_login(env: Env) -> None:
    env.admin.fault(kind="auth", op="create", member=member("refused"))

    job = env.rig.wait_status(env.publish("refused", "Never sent"), pb.JOB_STATUS_NEEDS_LOGIN)

    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "refreshing the access token failed" in job.last_error
    assert env.posts("refused") == []


def test_access_denied_needs_a_login(env: Env) -> None:
    env.admin.fault(kind="forbidden", op="create", member=member("forbidden"))

    job = env.rig.wait_status(env.publish("forbidden", "No permission"), pb.JOB_STATUS_NEEDS_LOGIN)

    assert "ACCESS_DENIED" in job.last_error
    assert env.posts("forbidden") == []


def test_linkedins_duplicate_answer_is_the_existing_post(env: Env) -> None:
    text = "Said it already (once)"
    token = credentials("duplicate")["access_token"]
    made = env.admin.create_post(token, member("duplicate"), "Said it already \\(once\\)")
    existing = made.headers["x-restli-id"]

    job = env.rig.wait_status(env.publish("duplicate", text), pb.JOB_STATUS_SUCCEEDED)

    assert job.result_post_id == existing
    assert env.rig.success_details(job)["found_existing"] is True
    assert [p["id"] for p in env.posts("duplicate")] == [existing]
    logs = PlatformRig.step_logs(job)
    assert f"the platform's duplicate is {existing}" in logs


def test_a_400_fails_for_good(env: Env) -> None:
    env.admin.fault(
        kind="invalid", status=400, message="Invalid commentary", member=member("invalid")
    )

    job = env.rig.wait_status(env.publish("invalid", "Refused"), pb.JOB_STATUS_FAILED)

    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert "Invalid commentary" in job.last_error
    assert job.attempt == 1 and env.posts("invalid") == []


def test_a_503_is_retried_after_looking_first(env: Env) -> None:
    env.admin.fault(kind="server_error", status=503, member=member("unavailable"))

    post_id = env.publish("unavailable", "Second time lucky")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)

    assert job.attempt == 2
    assert [p["text"] for p in env.posts("unavailable")] == ["Second time lucky"]
    assert "no earlier post found" in PlatformRig.step_logs(job)  # the retry looked first


def test_a_bare_429_closes_the_gate_until_midnight_utc(env: Env) -> None:
    env.admin.fault(kind="rate_limit", member=member("quota"))
    before = time.time()

    post_id = env.publish("quota", "Over the daily limit")
    job = env.rig.wait_job(post_id, "a rate-limited attempt", lambda j: j.rate_limited_count == 1)

    gate = env.rig.gate("linkedin", "quota")
    closed_until = gate.closed_until.ToNanoseconds() / 1e9
    assert gate.closed and gate.reason.startswith("quota cap")
    assert closed_until in {next_midnight_utc(before), next_midnight_utc(time.time())}
    assert job.status == pb.JOB_STATUS_QUEUED
    assert job.not_before.ToNanoseconds() / 1e9 == closed_until
    assert env.posts("quota") == []


def test_a_429_with_retry_after_throttles_briefly(env: Env) -> None:
    env.admin.fault(kind="rate_limit", retry_after_seconds=2, member=member("throttle"))
    before = time.time()

    post_id = env.publish("throttle", "Slowly now")
    gate = wait_until("the gate to close", lambda: env.rig.closed_gate("linkedin", "throttle"))
    closed_until = gate.closed_until.ToNanoseconds() / 1e9
    assert before + 2 <= closed_until <= time.time() + 2
    assert not gate.reason.startswith("quota cap")

    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    assert job.rate_limited_count == 1
    assert [p["text"] for p in env.posts("throttle")] == ["Slowly now"]


def test_a_worker_killed_after_its_permit_is_reconciled_not_reposted(env: Env) -> None:
    env.admin.fault(kind="accept_then_hang", hang_seconds=60, member=member("doubt"))

    post_id = env.publish("doubt", "Exactly once (please)")
    job = env.rig.kill_after_permit_then_reconcile(
        post_id, platform_has_post=lambda: bool(env.posts("doubt"))
    )

    (post,) = env.posts("doubt")
    assert job.result_post_id == post["id"]
    assert env.rig.success_details(job)["found_existing"] is True
    assert env.admin.requests(member("doubt"))["create"] == 1  # looked, never posted again


def test_credentials_never_show(env: Env) -> None:
    env.admin.fault(kind="auth", op="create", member=member("canary"))  # a refresh, then success
    ok = env.rig.wait_status(env.publish("canary", "Canary success"), pb.JOB_STATUS_SUCCEEDED)
    env.admin.fault(kind="invalid", status=422, member=member("canary"))
    failed = env.rig.wait_status(env.publish("canary", "Canary failure"), pb.JOB_STATUS_FAILED)

    output = env.rig.captured_output()
    assert ok.result_post_id in output and failed.last_error in output  # the jobs are in it
    assert CANARY not in output
    issued = env.admin.issued_tokens(member("canary")) + env.admin.issued_tokens(member("refresh"))
    assert issued and not any(token in output for token in issued)
