"""X end to end: coordinator and worker processes (PlatformRig) publishing through the X adapter
to the X stand-in inside a `postroom sandbox` process (contract-checked in test_x_contract.py).
Each scenario has an X account of its own, so no two tests share a gate, a fault or a token, and
every credential value holds `CANARY`. Asserted is what a user sees: the job's status, result
and error, the rate-limit gate, and the tweets X holds (the stand-in's record).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from platform_rig import CANARY, Account, PlatformRig
from polling import wait_until

from postroom.v1 import types_pb2 as pb
from worker.adapters.png import render_card

SCENARIOS = (
    "text",
    "image",
    "dup",
    "dupmiss",
    "refresh",
    "refused",
    "forbidden",
    "invalid",
    "unavailable",
    "throttle",
    "usercap",
    "appcap",
    "doubt",
    "canary",
    "filecred",
)
CLIENT_ID = f"{CANARY}-client-id"
CLIENT_SECRET = f"{CANARY}-client-secret"
REQUEST_TIMEOUT_S = 5.0


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
    x: httpx.Client  # the stand-in's admin API
    refresh_file: Path

    def publish(self, name: str, text: str, media: tuple[str, ...] = ()) -> str:
        return self.rig.publish(text, [f"x:{name}"], media=media)

    def tweets(self, name: str) -> list[dict[str, Any]]:
        answer = self.x.get("/_standin/tweets", params={"username": name}).json()
        tweets: list[dict[str, Any]] = answer["tweets"]
        return tweets

    def fault(self, name: str, **fault: object) -> None:
        response = self.x.post("/_standin/faults", json={"username": name, **fault})
        assert response.status_code == 201, response.text

    def fired(self, name: str, kind: str) -> dict[str, str]:
        fired = self.x.get("/_standin/faults").json()["fired"]
        headers: dict[str, str] = next(
            f["headers"] for f in reversed(fired) if (f["username"], f["kind"]) == (name, kind)
        )
        return headers

    def account(self, name: str) -> dict[str, Any]:
        account: dict[str, Any] = self.x.get(f"/_standin/accounts/{name}").json()
        return account

    def requests(self, name: str) -> dict[str, int]:
        counts: dict[str, int] = self.x.get("/_standin/stats").json()["by_user"].get(name, {})
        return counts


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("x")
    rig = PlatformRig(workdir)
    admin: httpx.Client | None = None
    try:
        base_url = f"{rig.cluster.start_sandbox()}/x"
        admin = httpx.Client(base_url=base_url, timeout=10.0)
        for name in SCENARIOS:
            creds = credentials(name)
            response = admin.post(
                "/_standin/accounts", json={"username": name, **creds, "user_id": None}
            )
            assert response.status_code == 201, response.text
        (rig.media_dir / "pic.png").write_bytes(render_card("launch", ["a picture"]))
        refresh_file = workdir / "x-filecred-refresh-token"
        refresh_file.write_text(credentials("filecred")["refresh_token"] + "\n")
        accounts = []
        for name in SCENARIOS:
            creds = credentials(name)
            if name == "filecred":
                creds["refresh_token"] = f"file:{refresh_file}"
            accounts.append(Account("x", name, base_url, creds))
        rig.start(accounts, worker_args=("--request-timeout-s", str(REQUEST_TIMEOUT_S)))
        yield Env(rig, admin, refresh_file)
    finally:
        if admin is not None:
            admin.close()
        rig.stop()


def test_publishes_text(env: Env) -> None:
    text = "Launch day: 50% off at https://example.com/sale?utm=x & more <3 #launch"

    job = env.rig.wait_status(env.publish("text", text), pb.JOB_STATUS_SUCCEEDED)

    (tweet,) = env.tweets("text")
    assert tweet["text"] == text
    assert "https://t.co/" in tweet["shown_text"]  # as X shows it
    assert job.result_post_id == tweet["id"]
    assert job.result_url == f"https://x.com/i/web/status/{tweet['id']}"


def test_publishes_an_image(env: Env) -> None:
    job = env.rig.wait_status(
        env.publish("image", "A picture post", media=("pic.png",)), pb.JOB_STATUS_SUCCEEDED
    )

    (tweet,) = env.tweets("image")
    assert len(tweet["media_ids"]) == 1 and job.result_post_id == tweet["id"]
    prepare = [line.message for run in job.runs for line in run.logs if line.step == "prepare"]
    assert any(f"1 media uploaded ({tweet['media_ids'][0]})" in m for m in prepare)


def test_xs_duplicate_answer_is_reconciled_to_the_existing_tweet(env: Env) -> None:
    text = "Said it already https://example.com/once"
    first = env.rig.wait_status(env.publish("dup", text), pb.JOB_STATUS_SUCCEEDED)

    # Another post with the same text: X answers 403 duplicate content; the job finds the tweet.
    again = env.rig.wait_status(env.publish("dup", text), pb.JOB_STATUS_SUCCEEDED)

    assert again.result_post_id == first.result_post_id
    assert env.rig.success_details(again)["found_existing"] is True
    assert [t["id"] for t in env.tweets("dup")] == [first.result_post_id]
    assert f"the platform's duplicate is {first.result_post_id}" in PlatformRig.step_logs(again)


def test_a_duplicate_that_cannot_be_found_fails(env: Env) -> None:
    env.fault("dupmiss", kind="duplicate")

    job = env.rig.wait_status(env.publish("dupmiss", "Nowhere to be found"), pb.JOB_STATUS_FAILED)

    assert job.last_error_class == pb.ERROR_CLASS_DUPLICATE
    assert "duplicate content" in job.last_error
    assert "no matching post was found" in PlatformRig.step_logs(job)
    assert env.tweets("dupmiss") == []


def test_an_expired_token_is_refreshed_and_the_tweet_goes_out(env: Env) -> None:
    env.fault("refresh", kind="expired_token")

    job = env.rig.wait_status(env.publish("refresh", "After a refresh"), pb.JOB_STATUS_SUCCEEDED)

    assert job.attempt == 1
    assert [t["text"] for t in env.tweets("refresh")] == ["After a refresh"]
    assert env.requests("refresh")["token_refresh"] == 1
    assert env.account("refresh")["access_token"] != credentials("refresh")["access_token"]


def test_a_refused_refresh_needs_a_login(env: Env) -> None:
    env.x.post("/_standin/accounts/refused/revoke")  # the user revoked postroom's access

    job = env.rig.wait_status(env.publish("refused", "Never sent"), pb.JOB_STATUS_NEEDS_LOGIN)

    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "refreshing the OAuth 2.0 token was refused" in job.last_error
    assert "Value passed for the token was invalid" in job.last_error
    assert env.tweets("refused") == []


def test_not_permitted_needs_the_account_owner(env: Env) -> None:
    env.fault("forbidden", kind="not_permitted")

    job = env.rig.wait_status(env.publish("forbidden", "No permission"), pb.JOB_STATUS_NEEDS_LOGIN)

    assert "You are not permitted to perform this action." in job.last_error
    assert env.tweets("forbidden") == []


def test_a_400_fails_for_good(env: Env) -> None:
    env.fault("invalid", kind="invalid", detail="Your Tweet text is not allowed.")

    job = env.rig.wait_status(env.publish("invalid", "Refused"), pb.JOB_STATUS_FAILED)

    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert "Your Tweet text is not allowed." in job.last_error
    assert job.attempt == 1 and env.tweets("invalid") == []


def test_a_503_is_retried_after_looking_first(env: Env) -> None:
    env.fault("unavailable", kind="unavailable", status=503)

    job = env.rig.wait_status(
        env.publish("unavailable", "Second time lucky"), pb.JOB_STATUS_SUCCEEDED
    )

    assert job.attempt == 2
    assert [t["text"] for t in env.tweets("unavailable")] == ["Second time lucky"]
    assert "no earlier post found" in PlatformRig.step_logs(job)  # the retry looked first


def gate_instant(gate: pb.RateLimitGate) -> float:
    return gate.closed_until.ToNanoseconds() / 1e9


def test_a_429_throttles_until_x_rate_limit_reset(env: Env) -> None:
    env.fault("throttle", kind="throttle", reset_in_s=2)

    post_id = env.publish("throttle", "Slowly now")
    gate = wait_until("the gate to close", lambda: env.rig.closed_gate("x", "throttle"))

    headers = env.fired("throttle", "throttle")
    assert headers["x-rate-limit-remaining"] == "0"
    assert gate_instant(gate) == int(headers["x-rate-limit-reset"])
    assert not gate.reason.startswith("quota cap")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    assert job.rate_limited_count == 1
    assert [t["text"] for t in env.tweets("throttle")] == ["Slowly now"]


@pytest.mark.parametrize(("name", "prefix"), [("usercap", "x-user"), ("appcap", "x-app")])
def test_a_24_hour_cap_closes_the_gate_until_its_reset(env: Env, name: str, prefix: str) -> None:
    env.fault(name, kind=name.replace("cap", "_cap"), reset_in_s=3 * 3600)
    before = time.time()

    post_id = env.publish(name, "Over the daily cap")
    job = env.rig.wait_job(post_id, "a rate-limited attempt", lambda j: j.rate_limited_count == 1)

    headers = env.fired(name, name.replace("cap", "_cap"))
    reset = int(headers[f"{prefix}-limit-24hour-reset"])
    assert headers[f"{prefix}-limit-24hour-remaining"] == "0"
    assert math.ceil(before + 3 * 3600) <= reset <= math.ceil(time.time() + 3 * 3600)
    gate = env.rig.gate("x", name)
    assert gate.closed and gate_instant(gate) == reset
    assert gate.reason.startswith("quota cap")
    assert job.status == pb.JOB_STATUS_QUEUED
    assert job.not_before.ToNanoseconds() / 1e9 == reset
    assert env.tweets(name) == []


def test_a_worker_killed_after_its_permit_is_reconciled_not_reposted(env: Env) -> None:
    env.fault("doubt", kind="accept_then_hang", hang_s=60)

    post_id = env.publish("doubt", "Exactly once https://example.com/once")
    job = env.rig.kill_after_permit_then_reconcile(
        post_id, platform_has_post=lambda: bool(env.tweets("doubt"))
    )

    (tweet,) = env.tweets("doubt")
    assert job.result_post_id == tweet["id"]
    assert env.rig.success_details(job)["found_existing"] is True
    counts = env.requests("doubt")
    assert counts["create"] == 1 and counts["timeline"] >= 1  # looked, never posted again


def test_credentials_never_show(env: Env) -> None:
    env.fault("canary", kind="expired_token")  # a refresh, then success
    ok = env.rig.wait_status(env.publish("canary", "Canary success"), pb.JOB_STATUS_SUCCEEDED)
    env.fault("canary", kind="invalid", detail="Canary refused.")
    failed = env.rig.wait_status(env.publish("canary", "Canary failure"), pb.JOB_STATUS_FAILED)

    output = env.rig.captured_output()
    assert ok.result_post_id in output and failed.last_error in output  # the jobs are in it
    assert CANARY not in output
    issued = env.account("canary")["issued"] + env.account("refresh")["issued"]
    assert issued and not any(token in output for token in issued)


def test_a_rotated_refresh_token_is_written_back_to_its_file(env: Env) -> None:
    env.x.post("/_standin/accounts/filecred/expire")

    env.rig.wait_status(env.publish("filecred", "Tokens rotated"), pb.JOB_STATUS_SUCCEEDED)

    current = env.account("filecred")["refresh_token"]
    assert current != credentials("filecred")["refresh_token"]  # X rotated it, once
    assert env.refresh_file.read_text() == current + "\n"
    assert env.refresh_file.stat().st_mode & 0o777 == 0o600
