"""The Mastodon adapter end to end: coordinator and worker processes publishing to mastodon-mock
(PyPI; a real implementation of Mastodon's client API) started as a process on 127.0.0.1.

One mastodon-mock, one fault proxy in front of it (tests/fault_proxy.py: the faults
mastodon-mock cannot make: a real Mastodon's ISO `X-RateLimit-Reset`, a lost answer, a create
call that never returns) and one coordinator + worker for the module. Every test has its own
postroom account and its own Mastodon user, so no two tests share a gate or a status count.
What a user would see is read where they would see it: the job (status, error class, result),
the gate, and the statuses on the Mastodon server itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from fault_proxy import FaultProxy, Reply, Rule, Seen
from platform_rig import CANARY, Account, PlatformRig

from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import ClusterConfig
from sandbox.local.mastodon import MastodonMock
from worker.adapters.png import render_card

REQUEST_TIMEOUT_S = 5.0
GATE_WAIT_S = 600  # a rate limit's reset in the future: long enough to outlast the module
CLOCK_SLACK_S = 0.001  # Timestamp nanoseconds against a float instant

# postroom account -> (Mastodon username, bearer token, through the fault proxy?)
USERS: dict[str, tuple[str, str, bool]] = {
    "text": ("text_user", "tok-text", False),
    "image": ("image_user", "tok-image", False),
    "revoked": ("revoked_user", "tok-revoked", False),  # the worker holds another token
    "suspended": ("suspended_user", "tok-suspended", False),
    "toolong": ("toolong_user", "tok-toolong", False),
    "flaky": ("flaky_user", "tok-flaky", True),
    "rl-epoch": ("rl_epoch_user", "tok-rl-epoch", False),
    "rl-iso": ("rl_iso_user", "tok-rl-iso", True),
    "lost": ("lost_user", "tok-lost", True),
    "kill": ("kill_user", "tok-kill", True),
    # A token that holds the canary: it works, so the canary passes through a success.
    "canary": ("canary_user", f"{CANARY}-works", False),
}
# The worker's credential for `revoked`: unknown to the server (401), and it holds the canary.
REVOKED_TOKEN = f"{CANARY}-revoked"


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonMock]:
    users = {username: token for username, token, _ in USERS.values()}
    with MastodonMock(tmp_path_factory.mktemp("mastodon-mock"), users) as m:
        yield m


@pytest.fixture(scope="module")
def proxy(mock: MastodonMock) -> Iterator[FaultProxy]:
    with FaultProxy(mock.url) as p:
        yield p


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, mock: MastodonMock, proxy: FaultProxy
) -> Iterator[PlatformRig]:
    accounts = []
    for name, (_, token, proxied) in USERS.items():
        options: dict[str, str | int | bool] = {}
        if name == "toolong":
            options["max_characters"] = 5000
        accounts.append(
            Account(
                "mastodon",
                name,
                proxy.url if proxied else mock.url,
                {"access_token": REVOKED_TOKEN if name == "revoked" else token},
                options,
            )
        )
    config = ClusterConfig(
        heartbeat_interval_s=1.0,
        lease_ttl_s=3.0,
        retry_initial_s=0.3,
        # The operator says this instance allows 5000 characters; the server will say no.
        coordinator_args=("--retry-max", "1", "--text-limit", "mastodon:toolong=5000"),
        worker_args=("--request-timeout-s", str(REQUEST_TIMEOUT_S)),
    )
    with PlatformRig(tmp_path_factory.mktemp("mastodon-rig"), config) as r:
        r.start(accounts)
        (r.media_dir / "pic.png").write_bytes(render_card("postroom", ["a picture for Mastodon"]))
        yield r


def token(account: str) -> str:
    return USERS[account][1]


def creates(proxy: FaultProxy, account: str) -> list[Seen]:
    """The create calls the worker sent through the proxy for `account`, in order."""
    bearer = f"Bearer {token(account)}"
    sent = proxy.requests("POST", r"/api/v1/statuses$")
    return [s for s in sent if s.headers.get("authorization") == bearer]


def seconds(ts: object) -> float:
    nanos: int = ts.ToNanoseconds()  # type: ignore[attr-defined]
    return nanos / 1e9


def run_steps(job: pb.Job) -> list[list[str]]:
    """Per run, the steps it logged, in order and without repeats."""
    return [list(dict.fromkeys(line.step for line in run.logs)) for run in job.runs]


# ---- publishing -------------------------------------------------------------------------------


def test_publishes_text(rig: PlatformRig, mock: MastodonMock) -> None:
    text = "Hello from postroom 👋🏽\nhttps://example.com/launch #postroom"
    post_id = rig.publish(text, ["mastodon:text"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)

    (status,) = mock.statuses(token("text"))
    assert job.result_post_id == status["id"]
    assert job.result_url == status["url"]
    assert mock.source_text(token("text"), status["id"]) == text
    assert status["media_attachments"] == []


def test_publishes_with_an_image(rig: PlatformRig, mock: MastodonMock) -> None:
    post_id = rig.publish("A picture", ["mastodon:image"], media=["pic.png"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)

    (status,) = mock.statuses(token("image"))
    assert job.result_post_id == status["id"]
    (attachment,) = status["media_attachments"]
    assert attachment["type"] == "image"
    served = httpx.get(attachment["url"], timeout=10.0)
    assert served.content == (rig.media_dir / "pic.png").read_bytes()


# ---- each error class from Mastodon's own answers ---------------------------------------------


def test_invalid_token_needs_login(rig: PlatformRig, mock: MastodonMock) -> None:
    post_id = rig.publish("never posted: the token is wrong", ["mastodon:revoked"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN)

    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "HTTP 401" in job.last_error
    assert mock.statuses(token("revoked")) == []


def test_suspended_account_needs_login(rig: PlatformRig, mock: MastodonMock) -> None:
    mock.suspend(token("suspended"))
    post_id = rig.publish("never posted: the account is suspended", ["mastodon:suspended"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN)

    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "HTTP 403: Your login is currently disabled" in job.last_error


def test_text_the_server_refuses_fails_as_invalid_content(
    rig: PlatformRig, mock: MastodonMock
) -> None:
    post_id = rig.publish("x" * 501, ["mastodon:toolong"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_FAILED)

    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert "HTTP 422: Validation failed: Text is too long" in job.last_error
    assert job.attempt == 1, "invalid content is not retried"
    assert mock.statuses(token("toolong")) == []


def test_server_error_is_retried_with_the_same_idempotency_key(
    rig: PlatformRig, mock: MastodonMock, proxy: FaultProxy
) -> None:
    mock.fault("POST", "/api/v1/statuses", status=503, count=1)
    post_id = rig.publish("posted on the second attempt", ["mastodon:flaky"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)

    first, second = job.runs
    assert first.error_class == pb.ERROR_CLASS_TRANSIENT and "HTTP 503" in first.error
    assert second.outcome == "succeeded"
    assert "verify" in run_steps(job)[1], "the attempt after a failed create looks first"
    sent = creates(proxy, "flaky")
    assert [s.headers["idempotency-key"] for s in sent] == [job.platform_key] * 2
    (status,) = mock.statuses(token("flaky"))
    assert job.result_post_id == status["id"]


def test_rate_limit_with_epoch_reset_closes_the_gate_until_then(
    rig: PlatformRig, mock: MastodonMock
) -> None:
    reset = int(time.time()) + GATE_WAIT_S
    # mastodon-mock's own 429 (it adds `Retry-After: 300`, which ends sooner than the reset).
    mock.fault(
        "POST", "/api/v1/statuses", effect="ratelimit", headers={"X-RateLimit-Reset": str(reset)}
    )
    post_id = rig.publish("held back by the rate limit", ["mastodon:rl-epoch"])
    job = rig.wait_job(post_id, "a rate-limited attempt", lambda j: j.rate_limited_count == 1)

    assert job.status == pb.JOB_STATUS_QUEUED
    assert job.last_error_class == pb.ERROR_CLASS_RATE_LIMITED
    gate = rig.gate("mastodon", "rl-epoch")
    assert gate.closed
    assert abs(seconds(gate.closed_until) - reset) < CLOCK_SLACK_S
    assert abs(seconds(job.not_before) - reset) < CLOCK_SLACK_S
    assert mock.statuses(token("rl-epoch")) == []


def test_rate_limit_with_iso_reset_closes_the_gate_until_then(
    rig: PlatformRig, mock: MastodonMock, proxy: FaultProxy
) -> None:
    # A real Mastodon's 429: its reset is an ISO 8601 time with microseconds, no Retry-After.
    reset = datetime.fromtimestamp(time.time() + GATE_WAIT_S, UTC)
    iso = reset.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # e.g. 2026-11-29T17:25:00.019685Z
    headers = {"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": iso}
    proxy.add(
        Rule(
            "POST", r"/api/v1/statuses$", reply=Reply(429, {"error": "Too many requests"}, headers)
        )
    )
    post_id = rig.publish("held back by Mastodon's rate limit", ["mastodon:rl-iso"])
    job = rig.wait_job(post_id, "a rate-limited attempt", lambda j: j.rate_limited_count == 1)

    assert job.status == pb.JOB_STATUS_QUEUED
    gate = rig.gate("mastodon", "rl-iso")
    assert gate.closed
    assert abs(seconds(gate.closed_until) - reset.timestamp()) < CLOCK_SLACK_S
    assert mock.statuses(token("rl-iso")) == []


# ---- never twice ------------------------------------------------------------------------------


def test_a_lost_answer_is_not_posted_twice_even_when_verify_misses(
    rig: PlatformRig, mock: MastodonMock, proxy: FaultProxy
) -> None:
    """The create reached Mastodon but its answer was lost; the next attempt's look at the
    timeline comes back empty (as it would for a status outside the window), so it sends the
    create again: with the same Idempotency-Key, and Mastodon answers with the first status."""
    proxy.add(Rule("POST", r"/api/v1/statuses$", after_forward=Reply(502, {"error": "lost"})))
    proxy.add(Rule("GET", r"/api/v1/accounts/[^/]+/statuses$", reply=Reply(200, [])))
    post_id = rig.publish("one status, two creates", ["mastodon:lost"])
    job = rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)

    sent = creates(proxy, "lost")
    assert len(sent) == 2
    assert {s.headers["idempotency-key"] for s in sent} == {job.platform_key}
    (status,) = mock.statuses(token("lost"))
    assert job.result_post_id == status["id"]


def test_worker_killed_after_its_commit_permit_is_reconciled(
    rig: PlatformRig, mock: MastodonMock, proxy: FaultProxy
) -> None:
    proxy.add(Rule("POST", r"/api/v1/statuses$", forward_then_hang=True))
    text = "posted, and then the worker died"
    post_id = rig.publish(text, ["mastodon:kill"])

    job = rig.kill_after_permit_then_reconcile(
        post_id, platform_has_post=lambda: len(mock.statuses(token("kill"))) == 1
    )

    (status,) = mock.statuses(token("kill"))
    assert job.result_post_id == status["id"]
    assert mock.source_text(token("kill"), status["id"]) == text
    # The rescuer found it by looking (its verify step names the status) and never sent the
    # create again.
    found = [line.message for line in job.runs[-1].logs if line.step == "verify"]
    assert any(f"found {status['id']}" in message for message in found), found
    assert len(creates(proxy, "kill")) == 1


# ---- credentials ------------------------------------------------------------------------------


def test_canary_credentials_never_appear_in_output(rig: PlatformRig, mock: MastodonMock) -> None:
    ok = rig.publish("published with a canary token", ["mastodon:canary"])
    rig.wait_status(ok, pb.JOB_STATUS_SUCCEEDED)
    refused = rig.publish("refused: the canary token is revoked", ["mastodon:revoked"])
    rig.wait_status(refused, pb.JOB_STATUS_NEEDS_LOGIN)
    assert len(mock.statuses(token("canary"))) == 1

    output = rig.captured_output()
    assert "HTTP 401" in output  # the failure is there, its credential is not
    assert CANARY not in output
