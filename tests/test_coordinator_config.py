"""The coordinator's command line: parsed once, bad values refused with a message that says why."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, coordinator_process

from coordinator.domain import Target
from coordinator.options import parse_args
from coordinator.retry import RetryPolicy


def test_defaults_follow_the_design() -> None:
    opts = parse_args([])
    lease = opts.coordinator.lease
    assert opts.listen == "127.0.0.1:50051" and opts.metrics_listen == "127.0.0.1:9464"
    assert opts.db == "sqlite:///postroom.db"
    assert lease.heartbeat_interval_s == 5 and lease.lease_ttl_s == 15  # TTL = 3 heartbeats
    assert lease.claim_timeout_s == 300 and lease.run_timeout_s == 600
    assert lease.confirm_timeout_s == 900
    assert parse_args(["--confirm-timeout-s", "120"]).coordinator.lease.confirm_timeout_s == 120
    # A permit is granted only with more time left than the worker keeps as its margin (3 s).
    assert lease.commit_min_left_s > 3


def test_retry_policy_per_platform_overrides_only_what_it_names() -> None:
    opts = parse_args(["--retry-initial", "2", "--retry-policy", "x:initial=30,max=900,jitter=0"])
    policies = opts.coordinator.retry
    assert policies.for_platform("sandbox") == RetryPolicy(initial_interval_s=2)
    x = policies.for_platform("x")
    assert (x.initial_interval_s, x.max_interval_s, x.jitter_fraction) == (30, 900, 0)
    assert x.backoff_factor == RetryPolicy().backoff_factor


def test_text_limits_per_platform_and_account_the_account_winning() -> None:
    opts = parse_args(
        ["--text-limit", "mastodon=1000", "--text-limit", "Mastodon:big-instance=5000"]
    )
    limits = opts.text_limits
    assert limits.for_target(Target("mastodon", "small")) == (1000, True)
    assert limits.for_target(Target("mastodon", "big-instance")) == (5000, True)
    assert limits.for_target(Target("x", "acme")) == (280, False)  # the platform's default
    assert parse_args([]).text_limits.for_target(Target("mastodon", "small")) == (500, False)


def test_several_coordinators_spread_by_default_except_under_mutual_tls() -> None:
    """Every coordinator on one PostgreSQL serves its share unless mutual TLS keeps a worker's
    stream from reaching the others (then one serves, the others stand by); asked is kept."""
    assert parse_args([]).resolved_placement() == "spread"
    ca = ["--tls-cert", "c.pem", "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"]
    assert parse_args(ca).resolved_placement() == "one"
    assert parse_args(["--placement", "one"]).resolved_placement() == "one"
    assert parse_args([*ca, "--placement", "spread"]).resolved_placement() == "spread"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--retry-policy", "x:speed=3"], "'speed' is not one of"),
        (["--retry-policy", "x:initial=soon"], "is not a number"),
        (["--retry-policy", "myspace:initial=3"], "unknown platform"),
        (["--retry-policy", "x:jitter=2"], "out of range"),
        (["--quota", "sandbox=two/3600"], "expected PLATFORM[:ACCOUNT]=N/SECONDS"),
        (["--text-limit", "mastodon"], "expected PLATFORM[:ACCOUNT]=N"),
        (["--text-limit", "myspace=500"], "unknown platform 'myspace'"),
        (["--text-limit", "mastodon=lots"], "is not a whole number"),
        (["--text-limit", "mastodon=0"], "between 1 and 100000"),
        (["--lease-ttl", "1", "--heartbeat-interval", "2"], "longer than --heartbeat-interval"),
        (["--listen", "nowhere"], "expected HOST:PORT"),
        (["--confirm-timeout-s", "0"], "--confirm-timeout-s must be positive"),
    ],
)
def test_bad_values_are_refused_with_a_reason(
    args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(args)
    assert exited.value.code not in (0, None)
    captured = capsys.readouterr()
    assert complaint in captured.err + str(exited.value.code)


# ---- start-up failures, as a user starting the command sees them ------------------------------


def _start(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "coordinator.main", "--db", f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--assets", str(tmp_path / "assets"), "--listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0", *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


def test_an_unsupported_database_url_is_a_one_line_error(tmp_path: Path) -> None:
    done = _start(tmp_path, "--db", "mysql://db.example/postroom")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "error: --db mysql://db.example/postroom" in done.stderr


def test_ports_in_use_are_one_line_errors(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _start(tmp_path, "--metrics-listen", f"127.0.0.1:{port}")
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert f"cannot serve metrics on 127.0.0.1:{port} (--metrics-listen)" in done.stderr
    # A second coordinator on a running one's gRPC port must not start beside it.
    (tmp_path / "first").mkdir()
    with coordinator_process(tmp_path / "first") as first:
        done = _start(tmp_path / "second", "--listen", first.address)
        assert done.returncode == 2, done.stderr
        assert f"cannot listen on {first.address} (--listen)" in done.stderr
        assert "Traceback" not in done.stderr
