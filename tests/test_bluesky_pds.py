"""The Bluesky adapter against the real reference PDS (@atproto/pds, in-memory PLC), with rate
limits on, behind a fault proxy: coordinator and worker as processes, posts counted in the PDS's
own repos.

One module-scoped PDS, proxy and rig; every test posts to a PDS account of its own (so tests
never share a gate or a session) and every account reaches the PDS through the proxy, which
counts what the worker sent and answers for the PDS where the PDS cannot be made to (its exact
error bodies, seen here). Tests run in file order: the SIGKILL test replaces the worker.
"""

from __future__ import annotations

import base64
import json
import statistics
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from fault_proxy import FaultProxy, Reply, Rule
from local_servers import require_pds
from platform_rig import CANARY, Account, PlatformRig

from postroom.clock import SystemClock
from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from sandbox.local.pds import PdsAccount, PdsServer
from worker.accounts import AccountConfig, Secret
from worker.adapters.base import JobSpec
from worker.adapters.png import render_card
from worker.errors import AuthRequired, Duplicate
from worker.media import MediaLoader
from worker.platforms.base import PlatformContext, Transcript
from worker.platforms.bluesky import BlueskyClient
from worker.platforms.bluesky_text import is_tid, tid_for
from worker.redact import Redactor

# Accounts in the rig: one per test. `friend` is only mentioned.
ACCOUNTS = (
    "text", "media", "bigimg", "badpw", "long", "flaky",
    "limited", "expiry", "bulk", "killed", "canary", "canarybad",
)  # fmt: skip
BULK_JOBS = 50
PDS_LOGIN_LIMIT = 30  # createSession per identifier and IP per 5 minutes
GRAPHEMES_400 = {  # the PDS's answer to a 301-grapheme post (seen here)
    "error": "InvalidRequest",
    "message": "Invalid app.bsky.feed.post record: grapheme too big (maximum 300, got 301) "
    "at $.record.text",
}
EXPIRED_400 = {"error": "ExpiredToken", "message": "Token has expired"}
INTERNAL_500 = {"error": "InternalServerError", "message": "Internal Server Error"}


@dataclass
class Env:
    pds: PdsServer
    proxy: FaultProxy
    rig: PlatformRig
    accounts: dict[str, PdsAccount]
    identifiers: dict[str, str]
    friend: PdsAccount

    def did(self, name: str) -> str:
        return self.accounts[name].did

    def records(self, name: str) -> list[dict[str, Any]]:
        return self.pds.list_records(self.did(name))

    def logins(self, name: str) -> int:
        """createSession calls the worker sent for the account."""
        return sum(
            json.loads(r.body).get("identifier") == self.identifiers[name]
            for r in self.proxy.requests("POST", r"createSession$")
        )

    def refreshes(self, name: str) -> int:
        return sum(
            _jwt_subject(r.headers.get("authorization", "")) == self.did(name)
            for r in self.proxy.requests("POST", r"refreshSession$")
        )


def _jwt_subject(authorization: str) -> str:
    payload = authorization.removeprefix("Bearer ").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims.get("sub", ""))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_pds()
    root = tmp_path_factory.mktemp("bluesky")
    with PdsServer(root / "pds", rate_limits=True) as pds, FaultProxy(pds.url) as proxy:
        friend = pds.create_account("pr-friend.test", "friend-pw-1")
        accounts: dict[str, PdsAccount] = {}
        credentials: dict[str, dict[str, str]] = {}
        for name in ACCOUNTS:
            if name.startswith("canary"):
                # Every credential field holds the canary: an e-mail identifier and a password.
                email = f"{name}-{CANARY}@example.com"
                account = pds.create_account(f"pr-{name}.test", f"pw-{CANARY}", email=email)
                password = f"pw-{CANARY}" if name == "canary" else f"wrong-{CANARY}"
                credentials[name] = {"identifier": email, "app_password": password}
            else:
                account = pds.create_account(f"pr-{name}.test", f"main-pw-{name}")
                password = pds.create_app_password(account)
                if name == "badpw":
                    password = "abcd-efgh-ijkl-mnop"  # an app password that is not its own
                credentials[name] = {"identifier": account.handle, "app_password": password}
            accounts[name] = account
        rig = PlatformRig(root / "rig")
        try:
            rig.start([Account("bluesky", name, proxy.url, credentials[name]) for name in ACCOUNTS])
            yield Env(
                pds,
                proxy,
                rig,
                accounts,
                {name: c["identifier"] for name, c in credentials.items()},
                friend,
            )
        finally:
            rig.stop()


def succeeded(env: Env, text: str, name: str, **publish: Any) -> pb.Job:
    post_id = env.rig.publish(text, [f"bluesky:{name}"], **publish)
    return env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)


def record_of(env: Env, job: pb.Job) -> dict[str, Any]:
    found = env.pds.get_record(job.result_post_id)
    assert found is not None, f"no record at {job.result_post_id}"
    value: dict[str, Any] = found["value"]
    return value


# ---- publishing -------------------------------------------------------------------------------


def test_publish_text_with_a_link_a_mention_and_a_tag(env: Env) -> None:
    text = (
        "Launch day ✨ with @pr-friend.test: https://example.com/launch?x=1. #postroom @ghost.test"
    )
    job = succeeded(env, text, "text")

    did = env.did("text")
    rkey = job.result_post_id.rsplit("/", 1)[1]
    assert job.result_post_id == f"at://{did}/app.bsky.feed.post/{rkey}"
    assert is_tid(rkey) and rkey == tid_for(job.platform_key)
    assert job.result_url == f"https://bsky.app/profile/{did}/post/{rkey}"
    record = record_of(env, job)
    assert record["text"] == text
    raw = text.encode()
    facets = {
        raw[f["index"]["byteStart"] : f["index"]["byteEnd"]].decode(): f["features"][0]
        for f in record["facets"]
    }
    assert facets == {
        "@pr-friend.test": {"$type": "app.bsky.richtext.facet#mention", "did": env.friend.did},
        "https://example.com/launch?x=1": {
            "$type": "app.bsky.richtext.facet#link",
            "uri": "https://example.com/launch?x=1",
        },
        "#postroom": {"$type": "app.bsky.richtext.facet#tag", "tag": "postroom"},
    }  # @ghost.test does not resolve: plain text
    assert len(env.records("text")) == 1


def test_publish_with_an_image(env: Env) -> None:
    png = render_card("postroom", ["an image post"])
    (env.rig.media_dir / "card.png").write_bytes(png)
    job = succeeded(env, "with a picture", "media", media=["card.png"])

    embed = record_of(env, job)["embed"]
    assert embed["$type"] == "app.bsky.embed.images"
    (image,) = embed["images"]
    assert image["image"]["mimeType"] == "image/png"
    assert image["image"]["size"] == len(png)
    assert env.pds.blob(env.did("media"), image["image"]["ref"]["$link"]) == png
    width, height = int.from_bytes(png[16:20]), int.from_bytes(png[20:24])
    assert image["aspectRatio"] == {"width": width, "height": height}


def test_an_image_over_the_blob_limit_fails_naming_the_rule(env: Env) -> None:
    (env.rig.media_dir / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 1_000_000)
    uploads = len(env.proxy.requests("POST", r"uploadBlob$"))
    post_id = env.rig.publish("too big", ["bluesky:bigimg"], media=["huge.png"])
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_FAILED)
    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert "at most 1,000,000 bytes" in job.last_error
    assert len(env.proxy.requests("POST", r"uploadBlob$")) == uploads
    assert env.records("bigimg") == []


# ---- errors from the PDS's real answers ----------------------------------------------------


def test_a_wrong_app_password_needs_login(env: Env) -> None:
    post_id = env.rig.publish("never posted", ["bluesky:badpw"])
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN)
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "Invalid identifier or password" in job.last_error
    check = env.rig.api.check_login(
        pub.CheckLoginRequest(device_id="w1", platform="bluesky", account="badpw", actor="t")
    )
    assert check.badge.state == pb.LOGIN_STATE_NEEDS_LOGIN
    assert env.records("badpw") == []


def test_text_the_pds_refuses_fails_as_invalid_content(env: Env) -> None:
    # The coordinator refuses a 301-grapheme post at CreatePost, so the PDS's own answer to one
    # comes from the proxy, word for word.
    env.proxy.add(Rule("POST", r"createRecord$", reply=Reply(400, GRAPHEMES_400)))
    post_id = env.rig.publish("stands in for 301 graphemes", ["bluesky:long"])
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_FAILED)
    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert "grapheme too big (maximum 300, got 301)" in job.last_error
    assert job.attempt == 1
    assert env.records("long") == []


def test_a_5xx_is_retried_and_the_post_made_once(env: Env) -> None:
    env.proxy.add(Rule("POST", r"createRecord$", reply=Reply(500, INTERNAL_500)))
    job = succeeded(env, "after one 500", "flaky")
    assert job.attempt == 2
    assert job.runs[0].error_class == pb.ERROR_CLASS_TRANSIENT
    assert len(env.records("flaky")) == 1


def test_the_login_rate_limit_closes_the_gate_until_its_reset(env: Env) -> None:
    identifier = env.identifiers["limited"]
    wrong = {"identifier": identifier, "password": "not-it"}
    # Each refused login costs the PDS a scrypt (~0.35 s): spend the limit in parallel.
    with ThreadPoolExecutor(max_workers=8) as pool:
        spent = pool.map(
            lambda _: env.pds.xrpc("POST", "com.atproto.server.createSession", json=wrong),
            range(PDS_LOGIN_LIMIT),
        )
        assert {answer.status_code for answer in spent} == {401}
    limited = env.pds.xrpc("POST", "com.atproto.server.createSession", json=wrong)
    assert limited.status_code == 429
    reset = int(limited.headers["RateLimit-Reset"])

    post_id = env.rig.publish("after the login limit", ["bluesky:limited"])
    job = env.rig.wait_job(post_id, "a rate-limited attempt", lambda j: j.rate_limited_count > 0)
    assert job.last_error_class == pb.ERROR_CLASS_RATE_LIMITED
    assert "RateLimitExceeded" in job.last_error
    gate = env.rig.gate("bluesky", "limited")
    assert gate.closed
    assert (gate.closed_until.seconds, gate.closed_until.nanos) == (reset, 0)
    assert job.status == pb.JOB_STATUS_QUEUED and job.not_before.seconds == reset
    assert env.logins("limited") == 1


# ---- the session: refreshed, never a login per job --------------------------------------------


def test_an_expired_access_token_is_refreshed_not_logged_in_again(env: Env) -> None:
    succeeded(env, "before the token expires", "expiry")
    assert (env.logins("expiry"), env.refreshes("expiry")) == (1, 0)

    env.proxy.add(Rule("POST", r"createRecord$", reply=Reply(400, EXPIRED_400)))
    succeeded(env, "after it expired", "expiry")
    assert (env.logins("expiry"), env.refreshes("expiry")) == (1, 1)
    # In order: the refused create, the refresh, the create repeated once with the new session.
    tail = [r.path.rsplit(".", 1)[1] for r in env.proxy.requests("POST", r"(Record|Session)$")]
    assert tail[-3:] == ["createRecord", "refreshSession", "createRecord"]
    assert len(env.records("expiry")) == 2


def test_fifty_jobs_on_one_account_log_in_once(env: Env) -> None:
    post_ids = [env.rig.publish(f"bulk post {n}", ["bluesky:bulk"]) for n in range(BULK_JOBS)]
    jobs = [env.rig.wait_status(p, pb.JOB_STATUS_SUCCEEDED, timeout_s=60) for p in post_ids]
    assert env.logins("bulk") == 1
    assert len(env.records("bulk")) == BULK_JOBS
    assert {j.result_post_id for j in jobs} == {
        f"at://{env.did('bulk')}/app.bsky.feed.post/{tid_for(j.platform_key)}" for j in jobs
    }
    # The closing note's figure: one attempt's wall time, lease to report.
    runs = [j.runs[-1] for j in jobs]
    seconds = [r.ended_at.ToNanoseconds() / 1e9 - r.started_at.ToNanoseconds() / 1e9 for r in runs]
    median_ms, max_ms = statistics.median(seconds) * 1000, max(seconds) * 1000
    print(f"\nbluesky publish, {len(seconds)} runs: median {median_ms:.0f} ms, max {max_ms:.0f} ms")


# ---- never twice ----------------------------------------------------------------------------


def test_a_worker_killed_after_its_permit_is_reconciled_by_get_record(env: Env) -> None:
    env.proxy.add(Rule("POST", r"createRecord$", forward_then_hang=True))
    post_id = env.rig.publish("the create reached the PDS", ["bluesky:killed"])
    job = env.rig.kill_after_permit_then_reconcile(
        post_id, platform_has_post=lambda: len(env.records("killed")) == 1
    )
    (record,) = env.records("killed")
    assert job.result_post_id == record["uri"]
    assert any(line.step == "verify" for line in job.runs[-1].logs)
    creates = [
        r
        for r in env.proxy.requests("POST", r"createRecord$")
        if env.did("killed").encode() in r.body
    ]
    assert len(creates) == 1  # the rescuer looked and did not create again


# ---- credentials never leak --------------------------------------------------------------------


def test_canary_credentials_never_appear_in_any_output(env: Env) -> None:
    succeeded(env, "canary post", "canary")
    post_id = env.rig.publish("canary refused", ["bluesky:canarybad"])
    env.rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN)
    assert len(env.records("canary")) == 1
    assert CANARY not in env.rig.captured_output()


# ---- the client on its own, against the PDS ----------------------------------------------------


def _client(pds: PdsServer, identifier: str, password: str, redactor: Redactor) -> BlueskyClient:
    secrets = {
        "identifier": Secret(identifier, name="identifier", source="inline", redactor=redactor),
        "app_password": Secret(password, name="app_password", source="inline", redactor=redactor),
    }
    account = AccountConfig(
        platform="bluesky", account="solo", base_url=pds.url, credentials=secrets
    )
    ctx = PlatformContext(clock=SystemClock(), media=MediaLoader(), redactor=redactor)
    return BlueskyClient(account, ctx)


def test_a_second_create_at_the_same_key_is_a_duplicate_naming_the_record(env: Env) -> None:
    account = env.pds.create_account("pr-twice.test", "twice-pw-1")
    redactor = Redactor()
    job = JobSpec(
        job_id="j-twice", platform="bluesky", account="solo", text="once", platform_key="pr-twice"
    )

    async def run() -> None:
        client = _client(env.pds, account.handle, account.password, redactor)
        t = Transcript(redactor)
        try:
            prepared = await client.prepare(job, t)
            first = await client.commit(job, prepared, t)
            with pytest.raises(Duplicate) as dup:
                await client.commit(job, prepared, t)
            assert dup.value.existing_id == first.post_id
            assert await client.verify(job, t) == first
            assert client.logins == 1
        finally:
            await client.aclose()

    anyio.run(run)
    assert len(env.pds.list_records(account.did)) == 1


def test_a_taken_down_account_needs_login(env: Env) -> None:
    account = env.pds.create_account("pr-gone.test", "gone-pw-1")
    env.pds.take_down(account)
    redactor = Redactor()

    async def run() -> None:
        client = _client(env.pds, account.handle, account.password, redactor)
        t = Transcript(redactor)
        try:
            assert await client.check_login(t) is False
            job = JobSpec(
                job_id="j", platform="bluesky", account="solo", text="x", platform_key="k"
            )
            with pytest.raises(AuthRequired, match="AccountTakedown"):
                await client.verify(job, t)
        finally:
            await client.aclose()

    anyio.run(run)
