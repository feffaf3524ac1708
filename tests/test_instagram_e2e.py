"""Instagram content publishing end to end: coordinator and worker processes publish through the
Graph stand-in inside `postroom sandbox` (base_url `{sandbox}/meta`). Instagram fetches the image
itself, so each account's `media_base_url` is the stand-in's hosted-media folder, holding the
same JPEG as the worker's --media-dir (a user serving their media folder publicly).

One module-scoped environment; each test posts to an IG user of its own. Asserted: the job's
status, class and result, the gate's "closed until", and what the platform holds: media, and
containers (never a second one while the first can still be published).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator

import pytest
from meta_helpers import (
    MetaAdmin,
    MetaEnv,
    audit_details,
    instagram_account,
    meta_env,
    run_seconds,
    tiny_jpeg,
    wait_for_posts,
)
from platform_rig import CANARY, Account

from postroom.v1 import types_pb2 as pb
from worker.adapters.png import render_card

USERS = [
    "image",
    "latency",
    "not-jpeg",
    "unfetchable",
    "no-media-base",
    "expired",
    "invalid",
    "transient",
    "not-ready",
    "published-unheard",
    "throttle-4",
    "throttle-80002",
    "app-usage",
    "quota",
    "canary",
    "kill",
]
PIC = "pic.jpg"
BUC_MINUTES = 9
QUOTA_TOTAL, QUOTA_WINDOW_S = 2, 3600
INSTANT_SLACK_S = 1.0
QUOTA_HISTORY: list[float] = []  # the quota account's earlier publishes, set up by the fixture


def token_for(name: str) -> str:
    return f"{CANARY}-ig" if name == "canary" else f"ig-token-{name}-0123456789"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetaEnv]:
    def make(admin: MetaAdmin, base_url: str) -> tuple[list[Account], dict[str, str]]:
        media_base = admin.host(PIC, tiny_jpeg()).removesuffix(f"/{PIC}")
        nodes = {name: str(17_841_400_000_000_000 + n) for n, name in enumerate(USERS)}
        now = time.time()
        QUOTA_HISTORY[:] = [now - 1000.4, now - 20.0]
        for name, user_id in nodes.items():
            extra: dict[str, object] = {"username": name, "polls_to_finish": 1}
            if name == "quota":
                extra.update(
                    quota_total=QUOTA_TOTAL,
                    quota_duration=QUOTA_WINDOW_S,
                    publishes=QUOTA_HISTORY,
                )
            admin.ig_user(user_id, token_for(name), **extra)
        accounts = [
            instagram_account(
                name,
                base_url,
                nodes[name],
                token_for(name),
                **({} if name == "no-media-base" else {"media_base_url": media_base}),
            )
            for name in USERS
        ]
        return accounts, nodes

    with meta_env(tmp_path_factory.mktemp("instagram"), make) as e:
        (e.rig.media_dir / PIC).write_bytes(tiny_jpeg())
        (e.rig.media_dir / "card").write_bytes(render_card("not", ["a JPEG"]))
        yield e


def publish(env: MetaEnv, account: str, caption: str, media: str = PIC) -> str:
    return env.rig.publish(caption, [f"instagram:{account}"], media=[media])


def media_of(env: MetaEnv, account: str) -> list[dict[str, object]]:
    return env.admin.posts(env.nodes[account])


def containers_of(env: MetaEnv, account: str) -> list[dict[str, object]]:
    return env.admin.containers(env.nodes[account])


def test_publishes_an_image_through_a_container(env: MetaEnv) -> None:
    post_id = publish(env, "image", "A JPEG and a caption #postroom")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    (media,) = media_of(env, "image")
    (container,) = containers_of(env, "image")
    assert media["text"] == "A JPEG and a caption #postroom"
    assert media["image_url"] == f"{env.base_url}/_standin/media/{PIC}"
    assert (container["status_code"], container["media_id"]) == ("PUBLISHED", media["id"])
    assert container["polls"] == 1, "the worker polled until FINISHED before publishing"
    assert job.result_post_id == media["id"]
    assert str(job.result_url).startswith("https://www.instagram.com/p/")


def test_publish_latency_against_the_stand_in(
    env: MetaEnv, record_property: Callable[[str, object], None]
) -> None:
    seconds = []
    for n in range(5):
        post_id = publish(env, "latency", f"latency probe {n}")
        seconds += run_seconds(env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED))
    median = statistics.median(seconds)
    record_property("instagram_publish_median_s", round(median, 3))
    print(f"\ninstagram publish (lease to result), median of 5: {median * 1000:.0f} ms")
    assert median < 2.0
    assert len(media_of(env, "latency")) == 5


@pytest.mark.parametrize(
    ("account", "media", "expected"),
    [
        ("not-jpeg", "card", "JPEG images only"),  # PNG bytes: refused by the worker
        ("no-media-base", PIC, "media_base_url"),  # a file Instagram could never fetch
        ("unfetchable", "https://127.0.0.1:9/gone.jpg", "code 9004"),  # refused by Instagram
    ],
)
def test_images_instagram_cannot_take_fail_for_good(
    env: MetaEnv, account: str, media: str, expected: str
) -> None:
    job = env.rig.wait_status(publish(env, account, "No image", media), pb.JOB_STATUS_FAILED)
    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert expected in job.last_error
    assert media_of(env, account) == [] and containers_of(env, account) == []


def test_expired_token_needs_login(env: MetaEnv) -> None:
    env.admin.fault(op="publishing_limit", target=env.nodes["expired"], code=190, subcode=463)
    job = env.rig.wait_status(publish(env, "expired", "Token expired"), pb.JOB_STATUS_NEEDS_LOGIN)
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED
    assert "code 190/463" in job.last_error
    assert containers_of(env, "expired") == []


def test_invalid_parameter_fails_for_good(env: MetaEnv) -> None:
    env.admin.fault(op="media", target=env.nodes["invalid"], code=100)
    job = env.rig.wait_status(publish(env, "invalid", "Refused"), pb.JOB_STATUS_FAILED)
    assert job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert len(job.runs) == 1 and media_of(env, "invalid") == []


@pytest.mark.parametrize(("account", "code"), [("transient", 2), ("not-ready", 9007)])
def test_a_failed_publish_is_retried_on_the_same_container(
    env: MetaEnv, account: str, code: int
) -> None:
    env.admin.fault(op="media_publish", target=env.nodes[account], code=code)
    job = env.rig.wait_status(
        publish(env, account, f"Retried after {code}"), pb.JOB_STATUS_SUCCEEDED
    )
    assert [r.outcome for r in job.runs] == ["retry", "succeeded"]
    assert job.runs[0].error_class == pb.ERROR_CLASS_TRANSIENT
    assert len(media_of(env, account)) == 1
    assert len(containers_of(env, account)) == 1, "the retry reused the FINISHED container"


def test_a_publish_that_went_unheard_is_found_by_its_container(env: MetaEnv) -> None:
    env.admin.fault(
        op="media_publish", target=env.nodes["published-unheard"], kind="accept_then_error"
    )
    post_id = publish(env, "published-unheard", "Published, answer lost")
    job = env.rig.wait_status(post_id, pb.JOB_STATUS_SUCCEEDED)
    (media,) = media_of(env, "published-unheard")
    assert len(containers_of(env, "published-unheard")) == 1
    assert job.result_post_id == media["id"]
    assert f"found {media['id']}" in env.rig.step_logs(job)  # the retry looked first
    (done,) = audit_details(env.rig.api, job.id, "JOB_SUCCEEDED")
    assert done["found_existing"] is True


@pytest.mark.parametrize(("account", "code"), [("throttle-4", 4), ("throttle-80002", 80002)])
def test_throttling_closes_the_gate_until_the_buc_estimate(
    env: MetaEnv, account: str, code: int
) -> None:
    fault = env.admin.fault(op="any", target=env.nodes[account], code=code, buc_minutes=BUC_MINUTES)
    publish(env, account, f"Throttled with code {code}")
    closed_until = env.gate_closed_until("instagram", account)
    assert abs(closed_until - (env.admin.fired(fault)["at"] + BUC_MINUTES * 60)) < INSTANT_SLACK_S
    assert media_of(env, account) == []


def test_app_usage_at_100_percent_closes_the_gate_for_the_rolling_hour(env: MetaEnv) -> None:
    fault = env.admin.fault(op="media", target=env.nodes["app-usage"], code=4, app_usage=100)
    publish(env, "app-usage", "Throttled by X-App-Usage")
    closed_until = env.gate_closed_until("instagram", "app-usage")
    assert abs(closed_until - (env.admin.fired(fault)["at"] + 3600)) < INSTANT_SLACK_S


def test_used_up_publishing_quota_closes_the_gate_as_a_quota_cap(env: MetaEnv) -> None:
    post_id = publish(env, "quota", "Over the quota")
    closed_until = env.gate_closed_until("instagram", "quota")
    # Room again when the oldest publish still counted leaves the rolling window.
    assert closed_until == pytest.approx(math.ceil(QUOTA_HISTORY[0]) + QUOTA_WINDOW_S, abs=1e-3)
    assert env.rig.gate("instagram", "quota").reason.startswith("quota cap")
    job = env.rig.wait_job(post_id, "back in the queue", lambda j: j.rate_limited_count == 1)
    assert job.last_error_class == pb.ERROR_CLASS_RATE_LIMITED
    assert "content publishing limit used up (2 of 2" in job.last_error
    assert containers_of(env, "quota") == [], "no container is made over the quota"


def test_canary_credentials_never_show(env: MetaEnv) -> None:
    ok = env.rig.wait_status(publish(env, "canary", "Canary success"), pb.JOB_STATUS_SUCCEEDED)
    assert CANARY not in env.rig.captured_output() + env.rig.step_logs(ok)
    env.admin.fault(
        op="media", target=env.nodes["canary"], code=100, message=f"bad {token_for('canary')}"
    )
    failed = env.rig.wait_status(publish(env, "canary", "Canary failure"), pb.JOB_STATUS_FAILED)
    assert "[redacted]" in failed.last_error
    assert CANARY not in env.rig.captured_output() + env.rig.step_logs(failed)


def test_sigkill_after_the_commit_permit_reconciles_by_caption(env: MetaEnv) -> None:
    """Last in the module: it kills the worker w1 and leaves w2 serving the accounts."""
    user = env.nodes["kill"]
    env.admin.fault(op="media_publish", target=user, kind="accept_then_hang", hang_seconds=60)
    post_id = publish(env, "kill", "Published once although the worker died")
    job = env.rig.kill_after_permit_then_reconcile(
        post_id, platform_has_post=lambda: len(env.admin.posts(user)) == 1
    )
    (media,) = wait_for_posts(env.admin, user, 1)
    assert job.result_post_id == media["id"]
    assert len(containers_of(env, "kill")) == 1, "exactly one container, made before the kill"
