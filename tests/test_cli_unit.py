"""The `postroom` CLI, run in-process against a fake Publishing server on a real port."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from postroom.v1 import access_pb2 as ac
from postroom.v1 import publishing_pb2 as pb
from postroom.v1 import publishing_pb2_grpc
from postroom.v1 import types_pb2 as t
from postroom_cli import main as cli_main
from postroom_cli.main import main
from postroom_cli.render import enum_label, fmt_attempt, fmt_time

T0 = 1_795_543_205  # 2026-11-24 18:00:05Z


def ts(seconds: int = T0) -> Timestamp:
    return Timestamp(seconds=seconds)


def make_post(status: t.PostStatus.ValueType = t.POST_STATUS_DRAFT) -> t.Post:
    return t.Post(
        id="p-1",
        text="Launch day!",
        targets=[t.Target(platform="x", account="acme")],
        status=status,
        content_hash="h-1",
        created_at=ts(),
        updated_at=ts(),
    )


def make_job(status: t.JobStatus.ValueType = t.JOB_STATUS_QUEUED, **fields: object) -> t.Job:
    job = t.Job(id="j-1", post_id="p-1", platform="x", account="acme", status=status)
    job.attempt, job.max_attempts, job.updated_at.seconds = 1, 3, T0
    for name, value in fields.items():
        setattr(job, name, value)
    return job


class FakePublishing(publishing_pb2_grpc.PublishingServicer):
    """Records every request and answers with canned messages, or with an error per method."""

    def __init__(self) -> None:
        self.address = ""
        self.calls: list[tuple[str, Message]] = []
        self.errors: dict[str, tuple[grpc.StatusCode, str]] = {}
        self.post = make_post()
        self.post_pages: list[list[t.Post]] = [[make_post()]]
        self.job = make_job()
        self.events: list[pb.JobEvent] = []
        self.asset = b""
        self.asset_chunk_bytes = 5
        self.audit: list[t.AuditEvent] = []
        self.audit_page_size = 2
        self.device = t.Device()
        self.gates = pb.ListRateLimitsResponse()
        self.login_state: t.LoginState.ValueType = t.LOGIN_STATE_LOGGED_IN
        self.metadata: list[dict[str, str]] = []  # each call's invocation metadata

    def requests(self, method: str) -> list[Message]:
        return [request for name, request in self.calls if name == method]

    def _record(self, method: str, request: Message, context: grpc.ServicerContext) -> None:
        self.calls.append((method, request))
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if method in self.errors:
            context.abort(*self.errors[method])

    def _post(self, method: str, request: Message, context: grpc.ServicerContext) -> t.Post:
        self._record(method, request, context)
        return self.post

    def CreatePost(self, request: pb.CreatePostRequest, context: grpc.ServicerContext) -> t.Post:
        return self._post("CreatePost", request, context)

    def CreatePosts(
        self, request: pb.CreatePostsRequest, context: grpc.ServicerContext
    ) -> pb.CreatePostsResponse:
        self._record("CreatePosts", request, context)
        return pb.CreatePostsResponse(posts=[self.post] * len(request.posts))

    def GetPost(self, request: pb.GetPostRequest, context: grpc.ServicerContext) -> t.Post:
        return self._post("GetPost", request, context)

    def UpdatePost(self, request: pb.UpdatePostRequest, context: grpc.ServicerContext) -> t.Post:
        return self._post("UpdatePost", request, context)

    def SubmitPost(self, request: pb.SubmitPostRequest, context: grpc.ServicerContext) -> t.Post:
        return self._post("SubmitPost", request, context)

    def ApprovePost(self, request: pb.ApprovePostRequest, context: grpc.ServicerContext) -> t.Post:
        return self._post("ApprovePost", request, context)

    def SchedulePost(
        self, request: pb.SchedulePostRequest, context: grpc.ServicerContext
    ) -> t.Post:
        return self._post("SchedulePost", request, context)

    def CancelPost(self, request: pb.CancelPostRequest, context: grpc.ServicerContext) -> t.Post:
        return self._post("CancelPost", request, context)

    def ListPosts(
        self, request: pb.ListPostsRequest, context: grpc.ServicerContext
    ) -> pb.ListPostsResponse:
        self._record("ListPosts", request, context)
        page = int(request.page_token or 0)
        more = page + 1 < len(self.post_pages)
        token = str(page + 1) if more else ""
        return pb.ListPostsResponse(posts=self.post_pages[page], next_page_token=token)

    def _job(self, method: str, request: Message, context: grpc.ServicerContext) -> t.Job:
        self._record(method, request, context)
        return self.job

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> t.Job:
        return self._job("GetJob", request, context)

    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> t.Job:
        return self._job("CancelJob", request, context)

    def RetryJob(self, request: pb.RetryJobRequest, context: grpc.ServicerContext) -> t.Job:
        return self._job("RetryJob", request, context)

    def ConfirmJob(self, request: pb.ConfirmJobRequest, context: grpc.ServicerContext) -> t.Job:
        return self._job("ConfirmJob", request, context)

    def ResolveJob(self, request: pb.ResolveJobRequest, context: grpc.ServicerContext) -> t.Job:
        return self._job("ResolveJob", request, context)

    def DeletePost(
        self, request: pb.DeletePostRequest, context: grpc.ServicerContext
    ) -> pb.DeletePostResponse:
        self._record("DeletePost", request, context)
        return pb.DeletePostResponse(post_id=request.post_id)

    def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.ServicerContext
    ) -> pb.ListJobsResponse:
        self._record("ListJobs", request, context)
        return pb.ListJobsResponse(jobs=[self.job])

    def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.JobEvent]:
        self._record("WatchJob", request, context)
        yield from self.events

    def GetAsset(
        self, request: pb.GetAssetRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AssetChunk]:
        self._record("GetAsset", request, context)
        for offset in range(0, len(self.asset), self.asset_chunk_bytes):
            data = self.asset[offset : offset + self.asset_chunk_bytes]
            yield pb.AssetChunk(
                data=data, offset=offset, total_size=len(self.asset), content_type="image/png"
            )

    def ListDevices(
        self, request: pb.ListDevicesRequest, context: grpc.ServicerContext
    ) -> pb.ListDevicesResponse:
        self._record("ListDevices", request, context)
        return pb.ListDevicesResponse(devices=[self.device])

    def CheckLogin(
        self, request: pb.CheckLoginRequest, context: grpc.ServicerContext
    ) -> pb.CheckLoginResponse:
        self._record("CheckLogin", request, context)
        badge = t.LoginBadge(state=self.login_state, message="profile page ok")
        requeued = ["j-7", "j-8"] if self.login_state == t.LOGIN_STATE_LOGGED_IN else []
        return pb.CheckLoginResponse(badge=badge, requeued_job_ids=requeued)

    def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        self._record("ListAuditEvents", request, context)
        rest = [e for e in self.audit if e.seq > request.after_seq]
        page = rest[: min(request.page_size, self.audit_page_size)]
        next_after = page[-1].seq if len(rest) > len(page) else 0
        return pb.ListAuditEventsResponse(events=page, next_after_seq=next_after)

    def WatchEvents(
        self, request: pb.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[t.AuditEvent]:
        self._record("WatchEvents", request, context)
        yield from (e for e in self.audit if e.seq > request.after_seq)

    def ListRateLimits(
        self, request: pb.ListRateLimitsRequest, context: grpc.ServicerContext
    ) -> pb.ListRateLimitsResponse:
        self._record("ListRateLimits", request, context)
        return self.gates

    def ReopenRateLimit(
        self, request: pb.ReopenRateLimitRequest, context: grpc.ServicerContext
    ) -> t.RateLimitGate:
        self._record("ReopenRateLimit", request, context)
        return t.RateLimitGate(target=t.Target(platform=request.platform, account=request.account))

    # Access

    def WhoAmI(self, request: ac.WhoAmIRequest, context: grpc.ServicerContext) -> ac.WhoAmIResponse:
        self._record("WhoAmI", request, context)
        return ac.WhoAmIResponse(actor="user:alice", role=ac.ROLE_AUTHOR, authenticated=True)

    def CreateToken(
        self, request: ac.CreateTokenRequest, context: grpc.ServicerContext
    ) -> ac.CreateTokenResponse:
        self._record("CreateToken", request, context)
        token = ac.OperatorToken(id="t-1", name=request.name, role=request.role)
        return ac.CreateTokenResponse(token=token, secret="prt_SECRET")

    def ListTokens(
        self, request: ac.ListTokensRequest, context: grpc.ServicerContext
    ) -> ac.ListTokensResponse:
        self._record("ListTokens", request, context)
        return ac.ListTokensResponse(
            tokens=[ac.OperatorToken(id="t-1", name="alice", role=ac.ROLE_AUTHOR)]
        )

    def RevokeToken(
        self, request: ac.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> ac.RevokeTokenResponse:
        self._record("RevokeToken", request, context)
        token = ac.OperatorToken(id="t-1", name=request.token, role=ac.ROLE_AUTHOR)
        return ac.RevokeTokenResponse(revoked=[token])

    def EnrollDevice(
        self, request: ac.EnrollDeviceRequest, context: grpc.ServicerContext
    ) -> ac.EnrollDeviceResponse:
        self._record("EnrollDevice", request, context)
        enrollment = ac.DeviceEnrollment(name=request.name, accounts=request.accounts)
        return ac.EnrollDeviceResponse(enrollment=enrollment, secret="prd_SECRET")

    def ListEnrollments(
        self, request: ac.ListEnrollmentsRequest, context: grpc.ServicerContext
    ) -> ac.ListEnrollmentsResponse:
        self._record("ListEnrollments", request, context)
        accounts = [t.Target(platform="sandbox", account="*")]
        return ac.ListEnrollmentsResponse(
            enrollments=[ac.DeviceEnrollment(name="api-1", accounts=accounts)]
        )

    def RevokeDevice(
        self, request: ac.RevokeDeviceRequest, context: grpc.ServicerContext
    ) -> ac.DeviceEnrollment:
        self._record("RevokeDevice", request, context)
        return ac.DeviceEnrollment(name=request.name)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePublishing]:
    monkeypatch.setenv("POSTROOM_ACTOR", "tester")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    servicer = FakePublishing()
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(executor)
    publishing_pb2_grpc.add_PublishingServicer_to_server(servicer, server)
    servicer.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield servicer
    server.stop(grace=None).wait()
    executor.shutdown(wait=True)


def run(fake: FakePublishing, *argv: str) -> int:
    return main(["--coordinator", fake.address, *argv])


def assert_shows(out: str, *expected: str) -> None:
    missing = [text for text in expected if text not in out]
    assert not missing, f"{missing} not in:\n{out}"


# Posts


def test_post_create_sends_every_field_and_prints_the_id(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(
        fake,
        *("post", "create", "--text", "Launch day!", "--media", "a.png", "b.png"),
        *("--target", "x:acme", "--target", "mastodon:@news@example.social"),
        *("--at", "2026-11-24T18:00:00Z", "--max-attempts", "5", "--require-confirm"),
        *("--as", "alice"),
    )
    assert code == 0
    assert capsys.readouterr().out == "p-1\n"
    [request] = fake.requests("CreatePost")
    assert isinstance(request, pb.CreatePostRequest)
    assert request.text == "Launch day!"
    assert list(request.media) == ["a.png", "b.png"]
    assert [(x.platform, x.account) for x in request.targets] == [
        ("x", "acme"),
        ("mastodon", "@news@example.social"),
    ]
    assert request.scheduled_at == "2026-11-24T18:00:00Z"
    assert (request.max_attempts, request.require_confirm, request.actor) == (5, True, "alice")


def test_post_create_approve_schedule_is_one_call(fake: FakePublishing) -> None:
    argv = ("post", "create", "--text", "hi", "--target", "x:acme", "--approve", "--schedule")
    assert run(fake, *argv) == 0
    [request] = fake.requests("CreatePost")
    assert [name for name, _ in fake.calls] == ["CreatePost"]
    assert isinstance(request, pb.CreatePostRequest)
    assert (request.approve, request.schedule, request.actor) == (True, True, "tester")


def test_post_create_failure_midway_says_the_post_exists(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.errors["SubmitPost"] = (grpc.StatusCode.PERMISSION_DENIED, "tester may not submit")
    assert run(fake, "post", "create", "--text", "hi", "--target", "x:acme", "--submit") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: PERMISSION_DENIED: tester may not submit")
    assert "post p-1 was created" in err


@pytest.mark.parametrize("target", ["xacme", ":acme", "x:", "x: "])
def test_malformed_target_is_a_usage_error(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    assert run(fake, "post", "create", "--text", "hi", "--target", target) == 2
    assert "PLATFORM:ACCOUNT" in capsys.readouterr().err
    assert fake.calls == []


def test_schedule_without_approve_is_a_usage_error(fake: FakePublishing) -> None:
    assert run(fake, "post", "create", "--text", "hi", "--target", "x:a", "--schedule") == 2
    assert fake.calls == []


def test_post_update_sends_only_what_changes(fake: FakePublishing) -> None:
    assert run(fake, "post", "update", "p-1", "--text", "new", "--media", "c.png") == 0
    [request] = fake.requests("UpdatePost")
    assert isinstance(request, pb.UpdatePostRequest)
    assert request.HasField("text") and request.text == "new"
    assert not request.HasField("scheduled_at")
    assert (list(request.media), request.replace_media) == (["c.png"], True)
    assert not request.targets


def test_post_show_has_the_per_target_table(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.post = make_post(t.POST_STATUS_PUBLISHING)
    fake.post.warnings.append("x:acme is rate limited")
    waiting = t.TargetState(target=t.Target(platform="x", account="acme"), job_id="j-1")
    waiting.job_status, waiting.attempt, waiting.not_before.seconds = t.JOB_STATUS_QUEUED, 2, T0
    waiting.last_error_class, waiting.last_error = t.ERROR_CLASS_RATE_LIMITED, "429 retry-after 30"
    done = t.TargetState(target=t.Target(platform="mastodon", account="news"), job_id="j-2")
    done.job_status, done.result_url = t.JOB_STATUS_SUCCEEDED, "https://m.example/@news/1"
    fake.post.target_states.extend([waiting, done])
    assert run(fake, "post", "show", "p-1") == 0
    out = capsys.readouterr().out
    assert_shows(out, "PUBLISHING", "warning: x:acme is rate limited", "x:acme", "j-1", "QUEUED")
    assert_shows(out, "2026-11-24 18:00:05Z", "RATE_LIMITED: 429 retry-after 30", "SUCCEEDED")
    assert_shows(out, "https://m.example/@news/1")
    assert "JOB_STATUS_" not in out


def test_global_options_work_after_the_subcommand(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["post", "show", "p-1", "--json", "--coordinator", fake.address]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["id"], data["status"], data["content_hash"]) == ("p-1", "POST_STATUS_DRAFT", "h-1")


def test_post_list_pages_and_prints_a_json_array(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    second = make_post()
    second.id = "p-2"
    fake.post_pages = [[make_post()], [second]]
    assert run(fake, "--json", "post", "list", "--status", "draft") == 0
    assert [p["id"] for p in json.loads(capsys.readouterr().out)] == ["p-1", "p-2"]
    requests = fake.requests("ListPosts")
    assert [r.page_token for r in requests if isinstance(r, pb.ListPostsRequest)] == ["", "1"]
    assert all(isinstance(r, pb.ListPostsRequest) and r.status == 1 for r in requests)


def test_unknown_status_is_a_usage_error_listing_the_choices(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "job", "list", "--status", "done") == 2
    assert "QUEUED, CLAIMED" in capsys.readouterr().err


# Errors


def test_grpc_errors_print_code_and_message(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.errors["GetJob"] = (grpc.StatusCode.NOT_FOUND, "job j-123 does not exist")
    assert run(fake, "job", "show", "j-123") == 1
    captured = capsys.readouterr()
    assert captured.err == "error: NOT_FOUND: job j-123 does not exist\n"
    assert captured.out == ""


def test_an_absent_coordinator_is_reported_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["--coordinator", f"127.0.0.1:{port}", "--timeout", "5", "device", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ")
    assert f"is the coordinator running at 127.0.0.1:{port}?" in err


# Jobs


def test_job_list_sends_filters_and_shows_rows(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.job = make_job(t.JOB_STATUS_NEEDS_LOGIN, device_id="d-1")
    args = ("--status", "needs_login", "--platform", "x", "--account", "acme", "--post", "p-1")
    assert run(fake, "job", "list", *args, "--device", "d-1") == 0
    [request] = fake.requests("ListJobs")
    assert isinstance(request, pb.ListJobsRequest)
    assert (request.status, request.platform, request.account) == (7, "x", "acme")
    assert (request.post_id, request.device_id) == ("p-1", "d-1")
    out = capsys.readouterr().out
    assert_shows(out, "j-1", "p-1", "x:acme", "NEEDS_LOGIN", "1/3", "d-1")


def test_job_show_lists_runs_logs_and_screenshots(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    run_ = t.Run(id="r-1", attempt=1, device_id="d-1", lease_epoch=4, outcome="failed")
    run_.error_class, run_.error, run_.committed = t.ERROR_CLASS_UI_CHANGED, "no #post", True
    run_.logs.add(step="compose", level=t.LOG_LEVEL_ERROR, message="[selector] gone", at=ts())
    run_.screenshots.add(label="on_failure", asset_id="abc123", size_bytes=2048)
    fake.job = make_job(t.JOB_STATUS_FAILED)
    fake.job.runs.append(run_)
    assert run(fake, "job", "show", "j-1") == 0
    out = capsys.readouterr().out
    assert_shows(out, "run r-1", "device d-1", "epoch 4", "failed", "committed yes")
    assert_shows(out, "UI_CHANGED: no #post", "compose", "ERROR", "[selector] gone", "on_failure")
    assert_shows(out, "abc123", "2.0 KiB")


def _watch_events(final: t.JobStatus.ValueType) -> list[pb.JobEvent]:
    def log(message: str) -> pb.JobEvent:
        entry = t.StepLog(step="publish", level=t.LOG_LEVEL_INFO, message=message, at=ts())
        return pb.JobEvent(log=pb.StepLogEvent(run_id="r-1", attempt=1, log=entry))

    return [
        pb.JobEvent(job=make_job(t.JOB_STATUS_QUEUED)),
        pb.JobEvent(job=make_job(t.JOB_STATUS_RUNNING, device_id="d-1")),
        pb.JobEvent(job=make_job(t.JOB_STATUS_RUNNING, device_id="d-1", lease_epoch=2)),
        log("sending the post"),
        log("platform answered"),
        pb.JobEvent(job=make_job(final)),
    ]


def test_job_watch_prints_logs_and_exits_0_on_success(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.events = _watch_events(t.JOB_STATUS_SUCCEEDED)
    assert run(fake, "job", "watch", "j-1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[4] for line in lines if " job j-1 " in line] == [
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
    ]
    assert any("INFO" in line and "publish: sending the post" in line for line in lines)


def test_job_watch_exits_1_on_failure_and_streams_json_lines(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.events = _watch_events(t.JOB_STATUS_FAILED)
    assert run(fake, "job", "watch", "j-1", "--json") == 1
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(events) == 6
    assert events[-1]["job"]["status"] == "JOB_STATUS_FAILED"
    assert events[3]["log"]["log"]["message"] == "sending the post"


def test_job_watch_shows_earlier_logs_first_once_each_and_exits_3_on_needs_login(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    def entry(message: str, second: int) -> t.StepLog:
        return t.StepLog(step="prepare", level=t.LOG_LEVEL_INFO, message=message, at=ts(second))

    attached = make_job(t.JOB_STATUS_RUNNING, device_id="d-9")
    earlier = t.Run(id="r-1", attempt=1, device_id="d-9")
    earlier.logs.extend([entry("uploaded media", T0), entry("built request", T0 + 1)])
    attached.runs.append(earlier)
    fake.events = [
        pb.JobEvent(job=attached),
        # Written while the watch attached: it comes again as a live event.
        pb.JobEvent(
            log=pb.StepLogEvent(run_id="r-1", attempt=1, log=entry("built request", T0 + 1))
        ),
        pb.JobEvent(log=pb.StepLogEvent(run_id="r-1", attempt=1, log=entry("posting", T0 + 2))),
        pb.JobEvent(job=make_job(t.JOB_STATUS_NEEDS_LOGIN)),
    ]
    assert run(fake, "job", "watch", "j-1") == 3
    out, err = capsys.readouterr()
    messages = [line.split(": ", 1)[1] for line in out.splitlines() if "prepare: " in line]
    assert messages == ["uploaded media", "built request", "posting"]
    assert "NEEDS_LOGIN" in out.splitlines()[-1]
    assert "needs a login on x:acme" in err
    assert "postroom device check-login d-9 --platform x --account acme" in err


def test_a_plain_retry_behind_a_closed_gate_says_when_and_mentions_force(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    opens = int(time.time()) + 600
    fake.job = make_job(t.JOB_STATUS_QUEUED)
    fake.job.not_before.seconds = opens
    assert run(fake, "job", "retry", "j-1") == 0
    out = capsys.readouterr().out
    assert f"next try {fmt_time(ts(opens))}" in out
    assert "rate-limit gate of x:acme opens; add --force" in out
    fake.job = make_job(t.JOB_STATUS_QUEUED)
    fake.job.not_before.seconds = int(time.time())
    assert run(fake, "job", "retry", "j-1", "--force") == 0
    assert "--force" not in capsys.readouterr().out


def test_attempts_past_the_maximum_show_as_verify_only_looks() -> None:
    assert fmt_attempt(make_job(attempt=2, max_attempts=3)) == "2/3"
    assert fmt_attempt(make_job(attempt=4, max_attempts=3, rate_limited_count=2)) == (
        "2/3 (+2 rate-limited)"
    )
    assert fmt_attempt(make_job(attempt=4, max_attempts=3)) == (
        "verify-only look 1 after 3/3 attempts"
    )
    # A job in doubt whose looks lost their leases before they looked: those do not count.
    assert fmt_attempt(make_job(attempt=12, max_attempts=3, lost_looks=10)) == (
        "2/3 (+10 lost before looking)"
    )


def test_job_watch_that_ends_early_is_an_error(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.events = _watch_events(t.JOB_STATUS_SUCCEEDED)[:2]
    assert run(fake, "job", "watch", "j-1") == 1
    assert "error: INCOMPLETE:" in capsys.readouterr().err


def test_job_actions_send_actor_reason_and_force(fake: FakePublishing) -> None:
    assert run(fake, "job", "cancel", "j-1", "--reason", "typo") == 0
    assert run(fake, "job", "retry", "j-1", "--force") == 0
    assert run(fake, "job", "confirm", "j-1", "--as", "bob") == 0
    assert fake.requests("CancelJob") == [
        pb.CancelJobRequest(job_id="j-1", actor="tester", reason="typo")
    ]
    assert fake.requests("RetryJob") == [
        pb.RetryJobRequest(job_id="j-1", force=True, actor="tester")
    ]
    assert fake.requests("ConfirmJob") == [pb.ConfirmJobRequest(job_id="j-1", actor="bob")]


def test_job_screenshot_reassembles_chunks(
    fake: FakePublishing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.asset = bytes(range(256)) * 3 + b"tail"
    asset_id = hashlib.sha256(fake.asset).hexdigest()
    target = tmp_path / "shot.png"
    assert run(fake, "job", "screenshot", asset_id, "-o", str(target)) == 0
    assert target.read_bytes() == fake.asset
    assert "image/png" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["shot.png"]


def test_a_corrupt_screenshot_leaves_no_file(
    fake: FakePublishing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.asset = b"not what was asked for"
    target = tmp_path / "shot.png"
    assert run(fake, "job", "screenshot", "0" * 64, "-o", str(target)) == 1
    assert "error: DATA_LOSS:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# Devices, audit, gates


def test_device_list_shows_slots_capabilities_and_badges(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    acme = t.Target(platform="x", account="acme")
    fake.device = t.Device(id="d-1", kind=t.WORKER_KIND_BROWSER, slots=4, free_slots=2)
    fake.device.state, fake.device.last_seen_at.seconds = t.DEVICE_STATE_ONLINE, T0
    fake.device.capabilities.append(acme)
    fake.device.logins.add(target=acme, state=t.LOGIN_STATE_NEEDS_LOGIN)
    assert run(fake, "device", "list") == 0
    out = capsys.readouterr().out
    assert_shows(out, "d-1", "BROWSER", "ONLINE", "2/4 free", "2026-11-24 18:00:05Z", "x:acme")
    assert_shows(out, "NEEDS_LOGIN")


def test_check_login_prints_the_badge_and_requeued_jobs(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "device", "check-login", "d-1", "--platform", "x", "--account", "acme") == 0
    assert fake.requests("CheckLogin") == [
        pb.CheckLoginRequest(device_id="d-1", platform="x", account="acme", actor="tester")
    ]
    out = capsys.readouterr().out
    assert "x:acme on d-1: LOGGED_IN (profile page ok)" in out
    assert "requeued: j-7, j-8" in out


def test_check_login_that_finds_no_login_exits_3_and_says_what_to_do(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.login_state = t.LOGIN_STATE_NEEDS_LOGIN
    assert run(fake, "device", "check-login", "d-1", "--platform", "x", "--account", "acme") == 3
    out = capsys.readouterr().out
    assert "no jobs requeued" in out and "log x:acme in on d-1" in out
    fake.login_state = t.LOGIN_STATE_UNKNOWN  # the check itself could not run
    assert run(fake, "device", "check-login", "d-1", "--platform", "x", "--account", "acme") == 1


def _audit_event(seq: int, details: str) -> t.AuditEvent:
    return t.AuditEvent(
        seq=seq, at=ts(T0 + seq), action="GATE_CLOSED", subject_id="x:acme", actor="system",
        details_json=details, execution_time_ms=3,
    )  # fmt: skip


def test_audit_export_pages_until_done_and_parses_details(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.audit = [_audit_event(seq, json.dumps({"retry_after_s": seq})) for seq in range(1, 6)]
    assert (
        run(fake, "--json", "audit", "export", "--action", "GATE_CLOSED", "--subject", "x:acme")
        == 0
    )
    requests = [
        r for r in fake.requests("ListAuditEvents") if isinstance(r, pb.ListAuditEventsRequest)
    ]
    assert [r.after_seq for r in requests] == [0, 2, 4]
    assert all((r.action, r.subject_id) == ("GATE_CLOSED", "x:acme") for r in requests)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    assert records[0] == {
        "seq": 1, "at": "2026-11-24T18:00:06Z", "action": "GATE_CLOSED", "subject_id": "x:acme",
        "actor": "system", "details": {"retry_after_s": 1}, "execution_time_ms": 3,
    }  # fmt: skip


def test_audit_export_to_a_file(
    fake: FakePublishing, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.audit = [_audit_event(1, ""), _audit_event(2, "not json")]
    target = tmp_path / "audit.jsonl"
    assert run(fake, "audit", "export", "--since", "2026-11-24T00:00:00Z", "-o", str(target)) == 0
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["details"] for r in records] == [{}, "not json"]
    assert capsys.readouterr().out == ""


def test_ratelimit_list_and_reopen(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = t.RateLimitGate(target=t.Target(platform="x", account="acme"), closed=True, hits=2)
    gate.closed_until.seconds, gate.reason = T0 + 30, "429 retry-after"
    gate.quota_limit, gate.quota_used, gate.quota_window_seconds = 3, 2, 3600
    fake.gates = pb.ListRateLimitsResponse(gates=[gate], now=ts())
    assert run(fake, "ratelimit", "list", "--closed") == 0
    out = capsys.readouterr().out
    assert_shows(out, "x:acme", "CLOSED", "2026-11-24 18:00:35Z (in 30s)", "429 retry-after")
    assert_shows(out, "2/3 per 3600s")
    assert fake.requests("ListRateLimits") == [pb.ListRateLimitsRequest(closed_only=True)]
    assert run(fake, "ratelimit", "reopen", "x:acme") == 0
    assert "gate x:acme: open" in capsys.readouterr().out
    assert fake.requests("ReopenRateLimit") == [
        pb.ReopenRateLimitRequest(platform="x", account="acme", actor="tester")
    ]


# Process commands, version, rendering


def test_process_commands_get_their_argv_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    demo = types.ModuleType("postroom_cli.demo")
    demo.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "postroom_cli.demo", demo)
    assert main(["demo", "--json", "--posts", "3"]) == 7
    assert seen == [["--json", "--posts", "3"]]


def test_a_missing_process_command_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli_main.DELEGATED, "worker", ("postroom_no_such_pkg.main", "main", ""))
    assert main(["worker", "--kind", "api"]) == 1
    assert capsys.readouterr().err.startswith("error: UNIMPLEMENTED: `postroom worker`")


def test_operator_commands_do_not_import_the_servers() -> None:
    code = (
        "import sys; from postroom_cli.main import build_parser; build_parser();"
        "print(sorted(m for m in ('coordinator', 'worker', 'sandbox') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("postroom ")


def test_enum_names_and_times_are_human() -> None:
    assert enum_label(t.JobStatus.DESCRIPTOR, t.JOB_STATUS_AWAITING_CONFIRM) == "AWAITING_CONFIRM"
    assert enum_label(t.ErrorClass.DESCRIPTOR, t.ERROR_CLASS_RATE_LIMITED) == "RATE_LIMITED"
    assert enum_label(t.PostStatus.DESCRIPTOR, 0) == "-"
    assert enum_label(t.PostStatus.DESCRIPTOR, 99) == "99"
    assert fmt_time(ts()) == "2026-11-24 18:00:05Z"
    assert fmt_time(Timestamp()) == "-"


# Access: tokens and devices


def test_the_operator_token_comes_from_the_environment_or_a_file(
    fake: FakePublishing,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(fake, "token", "whoami") == 0
    assert "authorization" not in fake.metadata[-1]  # none set: none sent
    monkeypatch.setenv("POSTROOM_TOKEN", "prt_from_env")
    assert run(fake, "token", "whoami") == 0
    assert fake.metadata[-1]["authorization"] == "Bearer prt_from_env"
    token_file = tmp_path / "alice.token"
    token_file.write_text("prt_from_file\n")
    assert run(fake, "--token-file", str(token_file), "post", "list") == 0
    assert fake.metadata[-1]["authorization"] == "Bearer prt_from_file"
    assert capsys.readouterr().out.startswith("user:alice (author)")
    # A secret on the command line is not taken (`ps` shows it).
    assert run(fake, "--token", "prt_x", "post", "list") == 2


def test_token_create_prints_the_secret_alone_on_stdout(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(fake, "token", "create", "--name", "alice", "--role", "author") == 0
    captured = capsys.readouterr()
    assert captured.out == "prt_SECRET\n"
    assert "shown once" in captured.err and "prt_SECRET" not in captured.err
    [request] = fake.requests("CreateToken")
    assert isinstance(request, ac.CreateTokenRequest)
    assert (request.name, request.role) == ("alice", ac.ROLE_AUTHOR)
    assert run(fake, "token", "create", "--name", "x", "--role", "boss") == 2


def test_token_list_and_revoke(fake: FakePublishing, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "token", "list", "--all") == 0
    assert_shows(capsys.readouterr().out, "t-1", "alice", "author")
    [listing] = fake.requests("ListTokens")
    assert isinstance(listing, ac.ListTokensRequest) and listing.include_revoked
    assert run(fake, "token", "revoke", "alice") == 0
    assert_shows(capsys.readouterr().out, "revoked t-1 (alice, author)")


def test_device_enroll_revoke_and_enrollments(
    fake: FakePublishing, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("device", "enroll", "api-1", "--account", "sandbox:*", "--account", "x:acme")
    assert run(fake, *argv, "--rotate") == 0
    captured = capsys.readouterr()
    assert captured.out == "prd_SECRET\n" and "POSTROOM_DEVICE_TOKEN" in captured.err
    [request] = fake.requests("EnrollDevice")
    assert isinstance(request, ac.EnrollDeviceRequest)
    assert [(a.platform, a.account) for a in request.accounts] == [("sandbox", "*"), ("x", "acme")]
    assert request.rotate
    assert run(fake, "device", "enrollments") == 0
    assert_shows(capsys.readouterr().out, "api-1", "sandbox:*")
    assert run(fake, "device", "revoke", "api-1") == 0
    assert_shows(capsys.readouterr().out, "device api-1 revoked")
