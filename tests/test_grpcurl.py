"""What an operator sees with the real grpcurl against a coordinator process: reflection lists
the services, `describe` shows the .proto comments, JSON in and out works, health answers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CoordinatorProcess, coordinator_process

GRPCURL = Path(sys.executable).with_name("grpcurl")


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    with coordinator_process(tmp_path_factory.mktemp("grpcurl")) as proc:
        yield proc


def grpcurl(
    proc: CoordinatorProcess, *verb: str, data: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`grpcurl -plaintext [-d DATA] ADDRESS VERB...` (VERB: list, describe X, or a method)."""
    flags = ["-d", data] if data is not None else []
    return subprocess.run(
        [str(GRPCURL), "-plaintext", *flags, proc.address, *verb],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def call(proc: CoordinatorProcess, method: str, body: dict[str, Any]) -> dict[str, Any]:
    done = grpcurl(proc, f"postroom.v1.Publishing/{method}", data=json.dumps(body))
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)
    return out


def test_lists_every_service(coordinator: CoordinatorProcess) -> None:
    done = grpcurl(coordinator, "list")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {
        "postroom.v1.Publishing",
        "postroom.v1.WorkerGateway",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


def test_describe_shows_the_rpc_comments(coordinator: CoordinatorProcess) -> None:
    done = grpcurl(coordinator, "describe", "postroom.v1.Publishing")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "// Publishing is what operators, the CLI and grpcurl talk to." in text
    assert "// Create a post in DRAFT (or, with approve and schedule" in text
    assert "rpc WatchJob ( .postroom.v1.WatchJobRequest ) returns ( stream" in text
    fields = grpcurl(coordinator, "describe", "postroom.v1.CreatePostRequest")
    assert "// RFC 3339 time" in fields.stdout


def test_create_schedule_and_list_jobs_with_json(coordinator: CoordinatorProcess) -> None:
    post = call(
        coordinator,
        "CreatePost",
        {
            "text": "hello from grpcurl",
            "targets": [
                {"platform": "sandbox", "account": "acme"},
                {"platform": "mastodon", "account": "acme"},
            ],
            "scheduled_at": "2030-01-01T09:00:00Z",
        },
    )
    assert post["status"] == "POST_STATUS_DRAFT" and post["text"] == "hello from grpcurl"
    post_id = post["id"]
    call(coordinator, "SubmitPost", {"postId": post_id})
    approved = call(coordinator, "ApprovePost", {"post_id": post_id, "actor": "ops"})
    assert approved["approvedBy"] == "user:ops"  # JSON output uses the lowerCamel names
    scheduled = call(coordinator, "SchedulePost", {"post_id": post_id})
    assert scheduled["status"] == "POST_STATUS_SCHEDULED"

    jobs = call(coordinator, "ListJobs", {"post_id": post_id})["jobs"]
    assert sorted(j["platform"] for j in jobs) == ["mastodon", "sandbox"]
    for job in jobs:
        assert job["status"] == "JOB_STATUS_QUEUED"
        assert job["scheduledAt"] == "2030-01-01T09:00:00Z"
    one = call(coordinator, "GetJob", {"job_id": jobs[0]["id"]})
    assert (one["postId"], one["maxAttempts"]) == (post_id, 3)


def test_a_bad_request_says_what_to_fix(coordinator: CoordinatorProcess) -> None:
    body = json.dumps({"text": " ", "targets": [{"platform": "sandbox", "account": "a"}]})
    done = grpcurl(coordinator, "postroom.v1.Publishing/CreatePost", data=body)
    assert done.returncode != 0
    assert "InvalidArgument" in done.stderr and "text is empty" in done.stderr


def test_health_check_is_serving(coordinator: CoordinatorProcess) -> None:
    for service in ("", "postroom.v1.Publishing", "postroom.v1.WorkerGateway"):
        body = json.dumps({"service": service})
        done = grpcurl(coordinator, "grpc.health.v1.Health/Check", data=body)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"status": "SERVING"}
