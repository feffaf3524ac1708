"""Facebook Pages end to end: coordinator and worker processes publish through the Graph
stand-in inside `postroom sandbox` (base_url `{sandbox}/meta`), with Meta's error answers.

One module-scoped environment; each test posts to a Page of its own, so no two tests share a
gate, a fault or a token. What is asserted is what a user sees: the job's status, error class
and result URL, the rate-limit gate's "closed until", and the posts the platform holds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator

import pytest
from meta_helpers import (
    MetaAdmin,
    MetaEnv,
    audit_details,
    facebook_account,
    meta_env,
    run_seconds,
    wait_for_posts,
)
from platform_rig import CANARY, Account

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from worker.adapters.png import render_card

PAGES = [
    "text",
    "photo",
    "photo-url",
    "latency",
    "expired",
    "permission",
    "invalid",
    "policy",
    "duplicate",
    "transient",
    "throttle-4",
    "throttle-17",
    "throttle-32",
    "throttle-613",
    "throttle-80001",
    "app-usage",
    "canary",
    "kill",
]
BUC_MINUTES = 7
# The gate's instant against the stand-in's (the same machine's clock, a request apart).
INSTANT_SLACK_S = 1.0


def token_for(name: str) -> str:
    return f"{CANARY}-page" if name == "canary" else f"page-token-{name}-0123456789"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetaEnv]:
    def make(admin: MetaAdmin, base_url: str) -> tuple[list[Account], dict[str, str]]:
        nodes = {name: str(100_000 + n) for n, name in enumerate(PAGES)}
        for name, page_id in nodes.items():
            admin.page(page_id, token_for(name), name=f"Page {name}")
        accounts = [facebook_account(n, base_url, nodes[n], token_for(n)) for n in PAGES]
        return accounts, nodes

    with meta_env(tmp_path_factory.mktemp("facebook"), make) as e:
        yield e


def publish(env: MetaEnv, account: str, text: str, *, media: tuple[str, ...] = ()) -> str:
    return env.rig.publish(text, [f"facebook:{account}"], media=media)


def texts(env: MetaEnv, account: str) -> list[str]:
    return [p["text"] for p in env.admin.posts(env.nodes[account])]


def test_publishes_a_text_post(env: MetaEnv) -> None:
    post_id = publish(env, "text", "Hello from postroom to a Facebook Page")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    (post,) = env.admin.posts(env.nodes["text"])
    assert (post["kind"], post["text"]) == ("status", "Hello from postroom to a Facebook Page")
    assert job.result_post_id == post["id"]
    assert job.result_url == f"https://www.facebook.com/{post['id']}"


def test_publishes_a_photo_uploaded_from_the_media_folder(env: MetaEnv) -> None:
    (env.rig.media_dir / "card.png").write_bytes(render_card("postroom", ["a photo post"]))
    post_id = publish(env, "photo", "A photo from the worker's media folder", media=("card.png",))
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    (post,) = env.admin.posts(env.nodes["photo"])
    assert (post["kind"], post["text"]) == ("photo", "A photo from the worker's media folder")
    assert job.result_url == f"https://www.facebook.com/{post['id']}"


def test_publishes_a_photo_facebook_fetches_from_a_url(env: MetaEnv) -> None:
    image_url = env.admin.host("hosted.png", render_card("postroom", ["by URL"]))
    post_id = publish(env, "photo-url", "A photo Facebook fetches", media=(image_url,))
    env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    assert texts(env, "photo-url") == ["A photo Facebook fetches"]


def test_publish_latency_against_the_stand_in(
    env: MetaEnv, record_property: Callable[[str, object], None]
) -> None:
    seconds = []
    for n in range(5):
        post_id = publish(env, "latency", f"latency probe {n}")
        seconds += run_seconds(env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED))
    median = statistics.median(seconds)
    record_property("facebook_publish_median_s", round(median, 3))
    print(f"\nfacebook publish (lease to result), median of 5: {median * 1000:.0f} ms")
    assert median < 2.0
    assert len(texts(env, "latency")) == 5


def test_expired_token_needs_login_until_a_working_token_is_back(env: MetaEnv) -> None:
    page = env.nodes["expired"]
    env.admin.fault(op="feed", target=page, code=190, subcode=463)
    post_id = publish(env, "expired", "Posted once the token works again")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN)
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "code 190/463" in job.last_error and "make a new one" in job.last_error
    check = pub.CheckLoginRequest(device_id="w1", platform="facebook", account="expired")
    assert env.rig.api.check_login(check).badge.state == pb.LOGIN_STATE_NEEDS_LOGIN
    env.admin.page(page, token_for("expired"))  # the Page's token works again
    assert job.id in env.rig.api.check_login(check).requeued_job_ids
    env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    assert texts(env, "expired") == ["Posted once the token works again"]


def test_missing_permission_needs_login(env: MetaEnv) -> None:
    env.admin.fault(op="feed", target=env.nodes["permission"], code=200)
    post_id = publish(env, "permission", "Needs pages_manage_posts")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_NEEDS_LOGIN)
    assert "pages_manage_posts" in job.last_error
    assert texts(env, "permission") == []


@pytest.mark.parametrize(("account", "code"), [("invalid", 100), ("policy", 368)])
def test_refused_content_fails_for_good(env: MetaEnv, account: str, code: int) -> None:
    env.admin.fault(op="feed", target=env.nodes[account], code=code)
    post_id = publish(env, account, f"Refused with code {code}")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_FAILED)
    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert f"code {code}" in job.last_error
    assert len(job.runs) == 1, "a refusal of the content is not retried"
    assert texts(env, account) == []


def test_duplicate_506_is_verified_and_found(env: MetaEnv) -> None:
    text = "The same words twice"
    first = env.rig.wait_status(publish(env, "duplicate", text), pb.JOB_STATUS_SUCCEEDED)
    second = env.rig.wait_status(publish(env, "duplicate", text), pb.JOB_STATUS_SUCCEEDED)
    assert second.result_post_id == first.result_post_id
    assert texts(env, "duplicate") == [text], "Facebook refused the repeat (506): one post"
    assert "the platform's duplicate is" in env.rig.step_logs(second)
    (done,) = audit_details(env.rig.api, second.id, "JOB_SUCCEEDED")
    assert done["found_existing"] is True


def test_transient_error_is_retried_and_posts_once(env: MetaEnv) -> None:
    env.admin.fault(op="feed", target=env.nodes["transient"], code=2)  # 503, is_transient
    post_id = publish(env, "transient", "Posted on the second attempt")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    assert [r.outcome for r in job.runs] == ["retry", "succeeded"]
    assert job.runs[0].error_class == pb.ERROR_CLASS_TRANSIENT
    assert texts(env, "transient") == ["Posted on the second attempt"]


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80001])
def test_throttling_closes_the_gate_until_the_buc_estimate(env: MetaEnv, code: int) -> None:
    account = f"throttle-{code}"
    fault = env.admin.fault(
        op="feed", target=env.nodes[account], code=code, buc_minutes=BUC_MINUTES
    )
    post_id = publish(env, account, f"Throttled with code {code}")
    closed_until = env.gate_closed_until("facebook", account)
    answered_at = env.admin.fired(fault)["at"]
    assert abs(closed_until - (answered_at + BUC_MINUTES * 60)) < INSTANT_SLACK_S
    job = env.rig.wait_job(post_id, "back in the queue", lambda j: j.rate_limited_count == 1)
    assert job.status == pb.JOB_STATUS_QUEUED
    assert job.last_error_class == pb.ERROR_CLASS_RATE_LIMITED
    assert texts(env, account) == []


def test_app_usage_at_100_percent_closes_the_gate_for_the_rolling_hour(env: MetaEnv) -> None:
    fault = env.admin.fault(op="feed", target=env.nodes["app-usage"], code=4, app_usage=100)
    publish(env, "app-usage", "Throttled by X-App-Usage")
    closed_until = env.gate_closed_until("facebook", "app-usage")
    answered_at = env.admin.fired(fault)["at"]
    assert abs(closed_until - (answered_at + 3600)) < INSTANT_SLACK_S
    assert "quota cap" in env.rig.gate("facebook", "app-usage").reason


def test_canary_credentials_never_show(env: MetaEnv) -> None:
    ok = env.rig.wait_status(publish(env, "canary", "Canary success"), pb.JOB_STATUS_SUCCEEDED)
    assert CANARY not in env.rig.captured_output() + env.rig.step_logs(ok)
    env.admin.fault(
        op="feed", target=env.nodes["canary"], code=100, message=f"bad {token_for('canary')}"
    )
    failed = env.rig.wait_status(publish(env, "canary", "Canary failure"), pb.JOB_STATUS_FAILED)
    assert "[redacted]" in failed.last_error  # Graph echoed the token; the worker scrubbed it
    assert CANARY not in env.rig.captured_output() + env.rig.step_logs(failed)


def test_sigkill_after_the_commit_permit_reconciles_by_text(env: MetaEnv) -> None:
    """Last in the module: it kills the worker w1 and leaves w2 serving the accounts."""
    page = env.nodes["kill"]
    env.admin.fault(op="feed", target=page, kind="accept_then_hang", hang_seconds=60)
    post_id = publish(env, "kill", "Posted once although the worker died")
    job = env.rig.kill_after_permit_then_reconcile(
        post_id, platform_has_post=lambda: len(env.admin.posts(page)) == 1
    )
    (post,) = wait_for_posts(env.admin, page, 1)
    assert job.result_post_id == post["id"]
    assert "found" in env.rig.step_logs(job)
    assert texts(env, "kill") == ["Posted once although the worker died"]
