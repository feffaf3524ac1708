"""Every error class end to end: real processes, the sandbox's fault injection, what users see.

One module-scoped cluster (sandbox, coordinator, two workers that serve every sandbox account)
runs all scenarios; each test posts to sandbox accounts of its own, so tests never share a gate,
a fault or a login. Waits poll with deadlines; "nothing happens" is checked by polling for a
while (`assert_holds`). Timing assertions are about order only, read from the audit log: a
lease's `at` against the `retry_at` its JOB_RETRY_SCHEDULED entry promised.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from polling import wait_until

from postroom.v1 import publishing_pb2 as pub
from postroom.v1 import types_pb2 as pb
from postroom_cli.client import PublishingClient
from postroom_cli.cluster import ClusterConfig, LocalCluster
from postroom_cli.main import main as postroom
from postroom_cli.render import fmt_attempt
from sandbox.admin import RetryAfterFormatName, SandboxAdmin

T = TypeVar("T")

WORKERS = ("fail-w1", "fail-w2")
QUOTA_ACCOUNT = "quota-acct"
QUOTA_LIMIT = 2
REQUEST_TIMEOUT_S = 1.5  # the workers' HTTP timeout; the `hang` fault outlasts it
RETRY_INITIAL_S = 0.3  # the coordinator's first transient backoff
# A 429's wait: long enough to look at the waiting state, short enough for a quick suite.
RETRY_AFTER_S = 3.0
SHORT_RETRY_AFTER_S = 2.0  # where nothing has to be seen during the wait
SWEEP_INTERVAL_S = 1.0  # the coordinator's safety-net sweep (coordinator/actor.py)
POLL_S = 0.05
# Audit `at` is a Timestamp made from the same float clock; allow its nanosecond truncation.
CLOCK_SLACK_S = 0.001


# ---- the cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    config = ClusterConfig(
        heartbeat_interval_s=1.0,
        lease_ttl_s=3.0,
        retry_initial_s=RETRY_INITIAL_S,
        coordinator_args=(
            "--retry-max",
            "1",
            "--quota",
            f"sandbox:{QUOTA_ACCOUNT}={QUOTA_LIMIT}/3600",
        ),
        worker_args=("--request-timeout-s", str(REQUEST_TIMEOUT_S)),
    )
    with LocalCluster(tmp_path_factory.mktemp("failures"), config) as c:
        c.start_sandbox()
        c.start_coordinator()
        for device in WORKERS:
            c.start_worker(device, platforms=("sandbox",), concurrency=4)
        c.wait_online(WORKERS)
        yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[PublishingClient]:
    with cluster.client() as c:
        yield c


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Iterator[SandboxAdmin]:
    with SandboxAdmin(cluster.sandbox_url) as a:
        yield a


# ---- helpers ----------------------------------------------------------------------------------


def assert_holds(what: str, check: Callable[[], bool], duration_s: float) -> None:
    """`check` stays true, polled throughout `duration_s` (for "this does not happen")."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        assert check(), f"no longer true: {what}"
        time.sleep(POLL_S)
    assert check(), f"no longer true: {what}"


def hold_until_wall(what: str, check: Callable[[], bool], unix_s: float) -> None:
    """`check` stays true until the wall clock (the coordinator's clock) has passed `unix_s`."""
    assert_holds(what, check, max(0.0, unix_s - time.time()))


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def cli(
    cluster: LocalCluster, capsys: pytest.CaptureFixture[str], *args: str, expect: int = 0
) -> str:
    """`postroom --coordinator ADDR ARGS...` in this process; its stdout and stderr (the exit
    code must be `expect`)."""
    capsys.readouterr()
    code = postroom(["--coordinator", cluster.coordinator_address, *args])
    out, err = capsys.readouterr()
    assert code == expect, f"postroom {' '.join(args)} exited {code}: {err}"
    return out + err


@dataclass(frozen=True)
class Audit:
    seq: int
    action: str
    subject: str
    at: float
    details: dict[str, Any]
    execution_time_ms: int


def audits(client: PublishingClient, subject: str, action: str = "") -> list[Audit]:
    response = client.list_audit_events(
        pub.ListAuditEventsRequest(subject_id=subject, action=action, page_size=10_000)
    )
    return [
        Audit(
            e.seq,
            e.action,
            e.subject_id,
            e.at.ToNanoseconds() / 1e9,
            json.loads(e.details_json or "{}"),
            e.execution_time_ms,
        )
        for e in response.events
    ]


def jobs_by_account(client: PublishingClient, post_id: str) -> dict[str, pb.Job]:
    """The post's current job per account (GetJob: with its runs)."""
    post = client.get_post(post_id)
    return {s.target.account: client.get_job(s.job_id) for s in post.target_states}


def target_states(post: pb.Post) -> dict[str, pb.TargetState]:
    return {s.target.account: s for s in post.target_states}


def post_in(client: PublishingClient, post_id: str, status: int) -> pb.Post | None:
    post = client.get_post(post_id)
    return post if post.status == status else None


def published(client: PublishingClient, post_id: str) -> Callable[[], pb.Post | None]:
    return lambda: post_in(client, post_id, pb.POST_STATUS_PUBLISHED)


def job_in(client: PublishingClient, job_id: str, status: int) -> pb.Job | None:
    job = client.get_job(job_id)
    return job if job.status == status else None


def waiting_after(state: pb.TargetState, error_class: int) -> bool:
    return state.job_status == pb.JOB_STATUS_QUEUED and state.last_error_class == error_class


def retry_scheduled(client: PublishingClient, job_id: str) -> Audit:
    [event] = audits(client, job_id, "JOB_RETRY_SCHEDULED")
    return event


def leases(client: PublishingClient, job_id: str) -> list[Audit]:
    return audits(client, job_id, "JOB_LEASED")


def sandbox_count(admin: SandboxAdmin, account: str) -> int:
    return len(admin.posts(platform="sandbox", account=account))


def device(client: PublishingClient, device_id: str) -> pb.Device:
    return next(d for d in client.list_devices().devices if d.id == device_id)


def badge(client: PublishingClient, device_id: str, account: str) -> int:
    for b in device(client, device_id).logins:
        if (b.target.platform, b.target.account) == ("sandbox", account):
            return b.state
    return pb.LOGIN_STATE_UNSPECIFIED


# ---- 1. the field's scenario ------------------------------------------------------------------


def test_field_scenario_instagram_rate_limited_then_retried_alone(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    fb, ig, x = "fb-field", "ig-field", "x-field"
    since = rfc3339_now()
    admin.inject("rate_limit", account=ig, retry_after_seconds=RETRY_AFTER_S)
    post_id = cluster.publish(
        client,
        "🎉 Big announcement coming tomorrow! Stay tuned. #ComingSoon",
        [f"sandbox:{fb}", f"sandbox:{ig}", f"sandbox:{x}"],
    )

    def partial() -> pb.Post | None:
        post = client.get_post(post_id)
        states = target_states(post)
        done = all(states[a].job_status == pb.JOB_STATUS_SUCCEEDED for a in (fb, x))
        return post if done and waiting_after(states[ig], pb.ERROR_CLASS_RATE_LIMITED) else None

    # While Instagram waits: the post is PUBLISHING with a partial-failure warning.
    waiting = wait_until("fb and x published, ig waiting after its 429", partial)
    assert waiting.status == pb.POST_STATUS_PUBLISHING
    [warning] = waiting.warnings
    assert "partial failure: 2 of 3 targets published" in warning
    assert f"sandbox:{ig} RATE_LIMITED (next try " in warning
    states = target_states(waiting)
    assert states[ig].not_before.seconds > 0  # the next try is shown
    assert "429" in states[ig].last_error
    for account in (fb, x):
        assert states[account].result_url.startswith(cluster.sandbox_url)
    shown = cli(cluster, capsys, "post", "show", post_id)
    if time.time() < states[ig].not_before.ToNanoseconds() / 1e9:  # answered while it waited
        assert "PUBLISHING" in shown and "warning: partial failure" in shown
        assert "RATE_LIMITED" in shown and "QUEUED" in shown

    done = wait_until("the post to be published", published(client, post_id))
    assert list(done.warnings) == []
    final = target_states(done)
    for account in (fb, x):  # the two successes kept their results
        assert final[account].result_post_id == states[account].result_post_id
        assert final[account].result_url == states[account].result_url
    assert final[ig].attempt == 2 and final[ig].result_url

    # Only Instagram was retried, and not before its retry time.
    jobs = jobs_by_account(client, post_id)
    assert len(jobs[fb].runs) == 1 and len(jobs[x].runs) == 1
    assert [r.outcome for r in jobs[ig].runs] == ["retry", "succeeded"]
    assert jobs[ig].runs[0].error_class == pb.ERROR_CLASS_RATE_LIMITED
    retry = retry_scheduled(client, jobs[ig].id)
    assert retry.details["reason"] == "rate_limited"
    first, second = leases(client, jobs[ig].id)
    assert first.at <= retry.at
    assert second.at >= retry.details["retry_at"] - CLOCK_SLACK_S
    assert second.details["attempt"] == 2

    # The audit log tells both rounds, like the field's log.
    [attempt] = audits(client, post_id, "PUBLISH_ATTEMPT")
    assert attempt.details["status"] == "partial_failure"
    assert attempt.execution_time_ms > 0
    targets = attempt.details["targets"]
    assert targets[f"sandbox:{fb}"]["status"] == "SUCCEEDED"
    assert targets[f"sandbox:{x}"]["status"] == "SUCCEEDED"
    assert targets[f"sandbox:{ig}"]["status"] == "QUEUED"
    assert targets[f"sandbox:{ig}"]["error_class"] == "RATE_LIMITED"
    assert targets[f"sandbox:{ig}"]["next_retry_at"]
    [retried] = audits(client, post_id, "PUBLISH_RETRY")
    assert retried.details["status"] == "success"
    assert list(retried.details["targets"]) == [f"sandbox:{ig}"]
    assert retried.details["targets"][f"sandbox:{ig}"]["attempt"] == 2
    assert retried.details["targets"][f"sandbox:{ig}"]["status"] == "SUCCEEDED"

    export = tmp_path / "audit.jsonl"
    cli(cluster, capsys, "audit", "export", "--since", since, "-o", str(export))
    records = [json.loads(line) for line in export.read_text().splitlines()]
    mine = {r["action"]: r for r in records if r["subject_id"] == post_id}
    assert mine["PUBLISH_ATTEMPT"]["details"]["status"] == "partial_failure"
    assert mine["PUBLISH_ATTEMPT"]["execution_time_ms"] > 0
    assert mine["PUBLISH_RETRY"]["details"]["targets"][f"sandbox:{ig}"]["attempt"] == 2

    assert [sandbox_count(admin, a) for a in (fb, ig, x)] == [1, 1, 1]
    assert not any(d["account"] in (fb, ig, x) for d in admin.duplicates())


# ---- 2. other rate-limit signal shapes --------------------------------------------------------


@pytest.mark.parametrize("fmt", ["http_date", "reset_unix"])
def test_rate_limit_signal_shapes_are_honoured(
    fmt: RetryAfterFormatName, cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    account = f"shape-{fmt.replace('_', '-')}"
    admin.inject(
        "rate_limit",
        account=account,
        retry_after_seconds=SHORT_RETRY_AFTER_S,
        retry_after_format=fmt,
    )
    post_id = cluster.publish(client, f"rate limited with {fmt}", [f"sandbox:{account}"])
    wait_until("published", published(client, post_id))

    job = jobs_by_account(client, post_id)[account]
    assert [r.outcome for r in job.runs] == ["retry", "succeeded"]
    source = "retry-after" if fmt == "http_date" else "x-ratelimit-reset"
    assert f"from {source}" in job.runs[0].error  # the header decided the wait
    retry_at = retry_scheduled(client, job.id).details["retry_at"]
    assert retry_at == int(retry_at)  # both header shapes name a whole second
    _, second = leases(client, job.id)
    assert second.at >= retry_at - CLOCK_SLACK_S
    assert sandbox_count(admin, account) == 1


# ---- 3. 401, then a login check ---------------------------------------------------------------


def test_auth_required_waits_for_a_login_check(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = "auth-acct"
    admin.inject("auth", account=account)
    post_id = cluster.publish(client, "needs a login", [f"sandbox:{account}"])
    job_id = client.get_post(post_id).target_states[0].job_id
    job = wait_until("NEEDS_LOGIN", lambda: job_in(client, job_id, pb.JOB_STATUS_NEEDS_LOGIN))
    dev = job.device_id
    assert job.last_error_class == pb.ERROR_CLASS_AUTH_REQUIRED

    post = client.get_post(post_id)
    assert post.status == pb.POST_STATUS_SCHEDULED
    assert any(f"sandbox:{account} needs a login" in w for w in post.warnings), post.warnings
    assert badge(client, dev, account) == pb.LOGIN_STATE_NEEDS_LOGIN
    listed = json.loads(cli(cluster, capsys, "--json", "device", "list"))
    [shown] = [d for d in listed if d["id"] == dev]
    badges = {
        (b["target"]["platform"], b["target"]["account"]): b["state"] for b in shown["logins"]
    }
    assert badges[("sandbox", account)] == "LOGIN_STATE_NEEDS_LOGIN"

    check_login = ("device", "check-login", dev, "--platform", "sandbox", "--account", account)
    # No automatic retry, however many sweeps pass.
    assert_holds(
        "the job waits for a login",
        lambda: (
            (j := client.get_job(job_id)).status == pb.JOB_STATUS_NEEDS_LOGIN and len(j.runs) == 1
        ),
        3 * SWEEP_INTERVAL_S,
    )

    # `job watch` ends at once (exit 3) and says where to log in and what to run then.
    out = cli(cluster, capsys, "job", "watch", job_id, expect=3)
    assert f"log the account in on {dev}, then run: postroom device check-login {dev}" in out
    assert f"{dev}, then run `postroom device check-login {dev}" in post.warnings[0]

    # Still logged out at the platform: the check says so (exit 3) and requeues nothing.
    out = cli(cluster, capsys, *check_login, expect=3)
    assert "NEEDS_LOGIN" in out and "no jobs requeued" in out
    assert client.get_job(job_id).status == pb.JOB_STATUS_NEEDS_LOGIN

    admin.set_logged_in("sandbox", account, True)
    out = cli(cluster, capsys, *check_login)
    assert "LOGGED_IN" in out and f"requeued: {job_id}" in out
    job = wait_until("SUCCEEDED", lambda: job_in(client, job_id, pb.JOB_STATUS_SUCCEEDED))
    assert len(job.runs) == 2
    assert client.get_post(post_id).status == pb.POST_STATUS_PUBLISHED
    assert badge(client, dev, account) == pb.LOGIN_STATE_LOGGED_IN
    assert sandbox_count(admin, account) == 1


# ---- 4. 400: terminal, then edit and reschedule -----------------------------------------------


def test_invalid_content_fails_until_edited_and_only_the_unpublished_target_reruns(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ok, bad = "inv-ok", "inv-bad"
    reason = "links to this domain are not allowed"
    admin.inject("invalid", account=bad, message=reason)
    post_id = cluster.publish(client, "see example.invalid", [f"sandbox:{ok}", f"sandbox:{bad}"])
    post = wait_until("FAILED", lambda: post_in(client, post_id, pb.POST_STATUS_FAILED))
    assert any(f"sandbox:{bad} failed: INVALID_CONTENT" in w and reason in w for w in post.warnings)

    jobs = jobs_by_account(client, post_id)
    failed_job, ok_job = jobs[bad], jobs[ok]
    assert failed_job.status == pb.JOB_STATUS_FAILED
    assert failed_job.last_error_class == pb.ERROR_CLASS_INVALID_CONTENT
    assert reason in failed_job.last_error
    assert ok_job.status == pb.JOB_STATUS_SUCCEEDED
    # Terminal: no retry comes, even after several backoff intervals.
    assert_holds(
        "the 400 is not retried",
        lambda: len(client.get_job(failed_job.id).runs) == 1,
        4 * RETRY_INITIAL_S,
    )

    shown = cli(cluster, capsys, "post", "update", post_id, "--text", "see example.org")
    assert "PENDING_APPROVAL" in shown
    assert client.get_post(post_id).status == pb.POST_STATUS_PENDING_APPROVAL
    cli(cluster, capsys, "post", "approve", post_id)
    cli(cluster, capsys, "post", "schedule", post_id)
    wait_until("PUBLISHED", published(client, post_id))

    after = jobs_by_account(client, post_id)
    assert after[ok].id == ok_job.id and len(after[ok].runs) == 1  # not published again
    assert after[bad].id != failed_job.id and len(after[bad].runs) == 1
    assert [p["text"] for p in admin.posts(platform="sandbox", account=ok)] == [
        "see example.invalid"
    ]
    assert [p["text"] for p in admin.posts(platform="sandbox", account=bad)] == ["see example.org"]
    scheduled = audits(client, post_id, "POST_SCHEDULED")[-1]  # the reschedule
    assert scheduled.details["skipped"] == [f"sandbox:{ok}"]
    # The operator is told that the published target still shows the text before the edit.
    (stale,) = client.get_post(post_id).warnings
    assert stale.startswith(f"sandbox:{ok}") and "shows an earlier version" in stale


# ---- 5. 5xx: backoff up to max_attempts -------------------------------------------------------


def test_server_errors_retry_with_backoff_up_to_max_attempts(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    always, once, unknown = "5xx-always", "5xx-once", "5xx-unknown"
    admin.inject("server_error", account=always, count=3, message="upstream exploded")
    admin.inject("server_error", account=once, count=1, status=503)
    admin.inject("upstream_error", account=unknown, count=3, message="gateway lost it")
    failing = cluster.publish(client, "three 500s", [f"sandbox:{always}"], max_attempts=3)
    flaky = cluster.publish(client, "one 503", [f"sandbox:{once}"])
    doubtful = cluster.publish(client, "three 502s", [f"sandbox:{unknown}"], max_attempts=3)

    wait_until("FAILED", lambda: post_in(client, failing, pb.POST_STATUS_FAILED))
    job = jobs_by_account(client, failing)[always]
    assert job.status == pb.JOB_STATUS_FAILED
    # Three 500s whose body says nothing was created: plain transient failures, nothing in
    # doubt, so no look after them and no attempt beyond the third.
    assert job.attempt == 3 and len(job.runs) == 3
    for run in job.runs:
        assert run.error_class == pb.ERROR_CLASS_TRANSIENT
        assert "HTTP 500: upstream exploded" in run.error
    assert not job.verify_first
    assert fmt_attempt(job) == "3/3"
    assert sandbox_count(admin, always) == 0

    # A gateway's 502 says nothing about the post: each leaves it in doubt, and after three
    # the job gets one verify-only look (shown as that, not as "attempt 4/3") before FAILED.
    wait_until("FAILED", lambda: post_in(client, doubtful, pb.POST_STATUS_FAILED))
    job = jobs_by_account(client, doubtful)[unknown]
    assert job.attempt == 4 and len(job.runs) == 4
    assert all(run.committed for run in job.runs[:3]) and not job.runs[3].committed
    assert "a final look found no post" in job.last_error
    assert "HTTP 502: gateway lost it" in job.last_error
    assert job.last_error.startswith("3 attempts failed")
    assert not job.verify_first  # verified: nothing is left in doubt
    assert fmt_attempt(job) == "verify-only look 1 after 3/3 attempts"
    leases = client.list_audit_events(
        pub.ListAuditEventsRequest(subject_id=job.id, action="JOB_LEASED")
    ).events
    assert ['"verify_only": true' in e.details_json for e in leases] == [False] * 3 + [True]
    assert sandbox_count(admin, unknown) == 0

    wait_until("PUBLISHED", published(client, flaky))
    job = jobs_by_account(client, flaky)[once]
    assert job.status == pb.JOB_STATUS_SUCCEEDED and job.attempt == 2
    assert "HTTP 503" in job.runs[0].error
    assert sandbox_count(admin, once) == 1


# ---- 6. a hang past the request timeout -------------------------------------------------------


def test_a_hang_after_the_commit_permit_is_retried_verifying_first(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = "hang-acct"
    admin.inject("hang", account=account, hang_seconds=10 * REQUEST_TIMEOUT_S)
    post_id = cluster.publish(client, "the platform hangs", [f"sandbox:{account}"])
    wait_until("PUBLISHED", published(client, post_id))

    job = jobs_by_account(client, post_id)[account]
    first_run, second_run = job.runs
    assert first_run.committed  # the hang came after the commit permit
    assert first_run.error_class == pb.ERROR_CLASS_TRANSIENT
    # Whichever ends the call first: the request timeout, or the commit's bound (0.8 x the
    # worker's lease margin, told to the coordinator with the permit request).
    assert "timed out" in first_run.error or "within its bound" in first_run.error
    first, second = leases(client, job.id)
    assert first.details["verify_first"] is False
    assert second.details["verify_first"] is True  # the retry looked before posting
    assert any(log.step == "verify" for log in second_run.logs)
    assert "no earlier post found" in cli(cluster, capsys, "job", "show", job.id)
    assert sandbox_count(admin, account) == 1


# ---- 7. accepted, then a 500 ------------------------------------------------------------------


def test_accepted_then_failed_is_found_by_verification_not_posted_twice(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    account = "atf-acct"
    admin.inject("accept_then_fail", account=account)
    post_id = cluster.publish(client, "made but not told", [f"sandbox:{account}"])
    post = wait_until("PUBLISHED", published(client, post_id))

    [made] = admin.posts(platform="sandbox", account=account)
    job = jobs_by_account(client, post_id)[account]
    assert job.result_post_id == made["id"]
    assert target_states(post)[account].result_url == made["url"]
    assert [r.outcome for r in job.runs] == ["retry", "succeeded"]
    assert leases(client, job.id)[1].details["verify_first"] is True
    [succeeded] = audits(client, job.id, "JOB_SUCCEEDED")
    assert succeeded.details["found_existing"] is True
    assert not any(d["account"] == account for d in admin.duplicates())


# ---- 8. one gate for every worker -------------------------------------------------------------


def test_a_gate_closed_by_one_429_holds_back_every_worker(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = "gate-acct"
    admin.inject("rate_limit", account=account, retry_after_seconds=RETRY_AFTER_S)
    first_post = cluster.publish(client, "first, rate limited", [f"sandbox:{account}"])
    first_job = client.get_post(first_post).target_states[0].job_id
    wait_until(
        "the 429 to close the gate",
        lambda: audits(client, first_job, "JOB_RETRY_SCHEDULED"),
    )
    second_post = cluster.publish(client, "second, same account", [f"sandbox:{account}"])
    second_job = client.get_post(second_post).target_states[0].job_id

    retry_at = retry_scheduled(client, first_job).details["retry_at"]
    # Scheduled while the gate is closed: its next try is the gate's opening, not "now".
    assert client.get_job(second_job).not_before.ToSeconds() >= math.floor(retry_at)
    gates = cli(cluster, capsys, "ratelimit", "list", "--closed")
    free_slots = [device(client, d).free_slots for d in WORKERS]
    second_status = client.get_job(second_job).status
    if time.time() < retry_at:  # all answered while the gate was closed, as an operator sees it
        assert f"sandbox:{account}" in gates and "429" in gates
        # Both workers are online with free slots: only the gate holds the job back.
        assert all(n > 0 for n in free_slots)
        assert second_status == pb.JOB_STATUS_QUEUED

    for post_id in (first_post, second_post):
        wait_until("PUBLISHED", published(client, post_id))
    [leased] = leases(client, second_job)
    assert leased.at >= retry_at - CLOCK_SLACK_S
    assert leases(client, first_job)[1].at >= retry_at - CLOCK_SLACK_S
    assert sandbox_count(admin, account) == 2


# ---- 9. a configured quota --------------------------------------------------------------------


def test_a_quota_lets_exactly_its_limit_through_until_an_operator_overrides(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = f"sandbox:{QUOTA_ACCOUNT}"
    post_ids = [cluster.publish(client, f"quota post {n}", [target]) for n in range(3)]
    job_ids = [client.get_post(p).target_states[0].job_id for p in post_ids]

    def statuses() -> list[int]:
        return [client.get_job(j).status for j in job_ids]

    wait_until("two published", lambda: statuses().count(pb.JOB_STATUS_SUCCEEDED) == QUOTA_LIMIT)
    [held] = [j for j in job_ids if client.get_job(j).status == pb.JOB_STATUS_QUEUED]
    assert leases(client, held) == []
    assert sandbox_count(admin, QUOTA_ACCOUNT) == QUOTA_LIMIT

    gates = json.loads(cli(cluster, capsys, "--json", "ratelimit", "list", "--closed"))
    [gate] = [g for g in gates if g["target"]["account"] == QUOTA_ACCOUNT]
    assert gate["closed"] is True and "quota" in gate["reason"]
    assert (gate["quota_used"], gate["quota_limit"]) == (QUOTA_LIMIT, QUOTA_LIMIT)
    assert "quota 2/3600s used up" in cli(cluster, capsys, "ratelimit", "list")

    # An operator's forced retry goes through the closed gate.
    out = cli(cluster, capsys, "job", "retry", held, "--force")
    assert held in out
    wait_until("forced through", lambda: job_in(client, held, pb.JOB_STATUS_SUCCEEDED))
    assert sandbox_count(admin, QUOTA_ACCOUNT) == QUOTA_LIMIT + 1

    # Still over quota: a fourth post waits, until the gate is reopened.
    fourth = cluster.publish(client, "quota post 3", [target])
    fourth_job = client.get_post(fourth).target_states[0].job_id
    assert_holds(
        "the fourth post waits for the quota",
        lambda: client.get_job(fourth_job).status == pb.JOB_STATUS_QUEUED,
        SWEEP_INTERVAL_S,
    )
    cli(cluster, capsys, "ratelimit", "reopen", target)
    wait_until("reopened", lambda: job_in(client, fourth_job, pb.JOB_STATUS_SUCCEEDED))
    assert sandbox_count(admin, QUOTA_ACCOUNT) == QUOTA_LIMIT + 2


# ---- 10. manual controls ----------------------------------------------------------------------


def test_job_retry_runs_a_failed_job_again_now(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    account = "retry-acct"
    admin.inject("upstream_error", account=account, status=502)
    post_id = cluster.publish(client, "one attempt only", [f"sandbox:{account}"], max_attempts=1)
    wait_until("FAILED", lambda: post_in(client, post_id, pb.POST_STATUS_FAILED))
    job_id = client.get_post(post_id).target_states[0].job_id
    shown = cli(cluster, capsys, "job", "show", job_id)
    # The 502 came after the commit permit, so a verify-only look ran before FAILED.
    assert "FAILED" in shown and "a final look found no post" in shown

    cli(cluster, capsys, "job", "retry", job_id)
    job = wait_until("SUCCEEDED", lambda: job_in(client, job_id, pb.JOB_STATUS_SUCCEEDED))
    assert [r.outcome for r in job.runs] == ["retry", "failed", "succeeded"]
    assert leases(client, job_id)[1].details["verify_only"] is True
    # The look proved the post absent: the operator's retry posts without looking again.
    assert leases(client, job_id)[2].details["verify_first"] is False
    assert client.get_post(post_id).status == pb.POST_STATUS_PUBLISHED
    assert sandbox_count(admin, account) == 1


def test_cancelling_a_waiting_job_or_a_post_stops_its_pending_jobs(
    cluster: LocalCluster,
    client: PublishingClient,
    admin: SandboxAdmin,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lone, kept, dropped = "cancel-job", "cancel-post-ok", "cancel-post-rl"
    for account in (lone, dropped):
        admin.inject("rate_limit", account=account, retry_after_seconds=RETRY_AFTER_S)
    job_post = cluster.publish(client, "cancel my job", [f"sandbox:{lone}"])
    post_id = cluster.publish(client, "cancel my post", [f"sandbox:{kept}", f"sandbox:{dropped}"])

    def waiting(pid: str, account: str) -> bool:
        states = target_states(client.get_post(pid))
        return waiting_after(states[account], pb.ERROR_CLASS_RATE_LIMITED) and all(
            s.job_status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_QUEUED) for s in states.values()
        )

    wait_until("the lone job to wait for its retry", lambda: waiting(job_post, lone))
    wait_until(
        "one target published, one waiting",
        lambda: (
            waiting(post_id, dropped)
            and target_states(client.get_post(post_id))[kept].job_status == pb.JOB_STATUS_SUCCEEDED
        ),
    )
    lone_job = client.get_post(job_post).target_states[0].job_id
    dropped_job = target_states(client.get_post(post_id))[dropped].job_id

    assert "CANCELLED" in cli(cluster, capsys, "job", "cancel", lone_job)
    cancelled = cli(cluster, capsys, "post", "cancel", post_id)
    # It says which target is already live: cancelling cannot take that back.
    assert "CANCELLED" in cancelled
    assert f"already published on sandbox:{kept}" in " ".join(cancelled.split())
    assert client.get_job(lone_job).status == pb.JOB_STATUS_CANCELLED
    post = client.get_post(post_id)
    assert post.status == pb.POST_STATUS_CANCELLED
    states = target_states(post)
    assert states[dropped].job_status == pb.JOB_STATUS_CANCELLED
    assert states[kept].job_status == pb.JOB_STATUS_SUCCEEDED  # what was published stays

    # Past the retry time nothing runs: never published.
    retry_at = max(retry_scheduled(client, j).details["retry_at"] for j in (lone_job, dropped_job))
    hold_until_wall(
        "cancelled jobs never run",
        lambda: len(leases(client, lone_job)) == 1 and len(leases(client, dropped_job)) == 1,
        retry_at + SWEEP_INTERVAL_S,
    )
    assert client.get_post(job_post).status == pb.POST_STATUS_CANCELLED
    assert [sandbox_count(admin, a) for a in (lone, kept, dropped)] == [0, 1, 0]


# ---- 11. post status rules --------------------------------------------------------------------


def test_post_status_rules_as_get_post_shows_them(
    cluster: LocalCluster, client: PublishingClient, admin: SandboxAdmin
) -> None:
    admin.inject("rate_limit", account="rule-part-rl", retry_after_seconds=RETRY_AFTER_S)
    admin.inject("auth", account="rule-login-auth")
    admin.inject("invalid", account="rule-fail-bad")
    admin.inject("auth", account="rule-fail-auth")
    scenarios = {  # the partial one last: its state only lasts until the retry
        "published": ["rule-pub"],
        "login": ["rule-login-ok", "rule-login-auth"],
        "failed": ["rule-fail-ok", "rule-fail-bad", "rule-fail-auth"],
        "partial": ["rule-part-ok", "rule-part-rl"],
    }
    posts = {
        name: cluster.publish(client, f"rules: {name}", [f"sandbox:{a}" for a in accounts])
        for name, accounts in scenarios.items()
    }

    def settled(name: str, want: dict[str, int]) -> pb.Post | None:
        post = client.get_post(posts[name])
        states = {a: s.job_status for a, s in target_states(post).items()}
        return post if states == want else None

    S, Q, NL, F = (
        pb.JOB_STATUS_SUCCEEDED,
        pb.JOB_STATUS_QUEUED,
        pb.JOB_STATUS_NEEDS_LOGIN,
        pb.JOB_STATUS_FAILED,
    )
    partial = wait_until(
        "partial", lambda: settled("partial", {"rule-part-ok": S, "rule-part-rl": Q})
    )
    login = wait_until(
        "login", lambda: settled("login", {"rule-login-ok": S, "rule-login-auth": NL})
    )
    failed = wait_until(
        "failed",
        lambda: settled("failed", {"rule-fail-ok": S, "rule-fail-bad": F, "rule-fail-auth": NL}),
    )
    done = wait_until("published", lambda: settled("published", {"rule-pub": S}))

    # Some succeeded, the rest waits for a retry: PUBLISHING with a partial-failure warning.
    assert partial.status == pb.POST_STATUS_PUBLISHING
    assert [w.split(";")[0] for w in partial.warnings] == [
        "partial failure: 1 of 2 targets published"
    ]
    # A target needs a login: SCHEDULED, with a warning naming the account.
    assert login.status == pb.POST_STATUS_SCHEDULED
    assert len(login.warnings) == 1 and "sandbox:rule-login-auth needs a login" in login.warnings[0]
    # A terminal failure wins over a login: FAILED, and both problems are listed.
    assert failed.status == pb.POST_STATUS_FAILED
    assert any("sandbox:rule-fail-bad failed: INVALID_CONTENT" in w for w in failed.warnings)
    assert any("sandbox:rule-fail-auth needs a login" in w for w in failed.warnings)
    # Every target succeeded: PUBLISHED, nothing to warn about.
    assert done.status == pb.POST_STATUS_PUBLISHED and list(done.warnings) == []

    wait_until("the partial post's retry", published(client, posts["partial"]))
