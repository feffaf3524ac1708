"""Security as a user meets it, with real processes: secure defaults beyond loopback, one
coordinator per database, TLS and mutual TLS between a real worker, the CLI and the coordinator,
and no secret (operator, device or sandbox admin token) in any log or listing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from access_rig import make_pki
from conftest import REPO_ROOT, CoordinatorProcess
from polling import wait_until

from postroom.v1 import access_pb2 as ac
from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import ClusterConfig, LocalCluster
from sandbox.admin import AdminError, SandboxAdmin

START_TIMEOUT_S = 30.0
PUBLISH_TIMEOUT_S = 30.0


def coordinator_once(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A coordinator that is expected to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "coordinator.main", "--metrics-listen", "127.0.0.1:0",
         "--assets", str(tmp_path / "assets"), *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S,
    )  # fmt: skip


def cli(
    address: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postroom_cli", "--coordinator", address, *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


# ---- secure by default -----------------------------------------------------------------------


def test_beyond_loopback_a_coordinator_needs_tls_and_tokens_unless_told(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'exposed.db'}"
    refused = coordinator_once(tmp_path, "--listen", "0.0.0.0:0", "--db", db)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "beyond loopback" in line and "--tls-cert" in line and "--insecure-plaintext" in line

    refused = coordinator_once(
        tmp_path, "--listen", "0.0.0.0:0", "--db", db, "--insecure-plaintext"
    )
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert "--bootstrap-admin-token-file" in line and "--insecure-no-auth" in line
    assert "Traceback" not in refused.stderr

    told = CoordinatorProcess(
        tmp_path / "told", db=tmp_path / "told.db",
        args=["--listen", "0.0.0.0:0", "--insecure-plaintext", "--insecure-no-auth"],
    )  # fmt: skip
    (tmp_path / "told").mkdir()
    told.start()
    try:
        assert "NO AUTHENTICATION" in told.log()
    finally:
        told.stop()

    pki = make_pki(tmp_path / "pki")
    token_file = tmp_path / "secure" / "admin.token"
    secure = CoordinatorProcess(
        tmp_path / "secure", db=tmp_path / "secure.db",
        args=["--listen", "0.0.0.0:0", "--tls-cert", str(pki.server_cert),
              "--tls-key", str(pki.server_key), "--bootstrap-admin-token-file", str(token_file)],
    )  # fmt: skip
    (tmp_path / "secure").mkdir()
    secure.start()
    try:
        assert "security: TLS; operator and device tokens required" in secure.log()
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token.startswith("prt_") and token not in secure.log()
        who = cli(secure.address, "--ca", str(pki.ca), "token", "whoami",
                  env={"POSTROOM_TOKEN": token})  # fmt: skip
        assert who.returncode == 0, who.stderr
        assert who.stdout.strip() == "user:bootstrap-admin (admin)"
        grpcurl = [str(Path(sys.executable).with_name("grpcurl")), "-cacert", str(pki.ca)]
        method = [secure.address, "postroom.v1.Publishing/WhoAmI"]
        bearer = ["-H", f"authorization: Bearer {token}"]
        answer = subprocess.run([*grpcurl, *bearer, *method], capture_output=True, text=True)
        assert answer.returncode == 0 and '"actor": "user:bootstrap-admin"' in answer.stdout
        answer = subprocess.run([*grpcurl, *method], capture_output=True, text=True)
        assert answer.returncode != 0 and "Unauthenticated" in answer.stderr
    finally:
        secure.stop()


def test_on_loopback_without_tokens_it_runs_open_and_says_so(tmp_path: Path) -> None:
    proc = CoordinatorProcess(tmp_path, db=tmp_path / "open.db")
    proc.start()
    try:
        (line,) = [x for x in proc.log().splitlines() if x.startswith("security:")]
        assert "plaintext (loopback)" in line and "no authentication" in line
        assert cli(proc.address, "post", "list").returncode == 0
    finally:
        proc.stop()


def test_a_second_coordinator_on_the_same_database_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "one.db"
    first = CoordinatorProcess(tmp_path, db=db)
    first.start()
    try:
        second = coordinator_once(tmp_path, "--listen", "127.0.0.1:0", "--db", f"sqlite:///{db}")
        assert second.returncode == 2
        (line,) = second.stderr.strip().splitlines()
        assert f"another coordinator (pid {first.pid}) is using {db}" in line
        first.kill()  # a crash leaves no stale lock: the kernel drops it with the process
        first.restart()
        assert "listening on" in first.log()
    finally:
        first.stop()


# ---- TLS with real processes -----------------------------------------------------------------


def wait_published(cluster: LocalCluster, post_id: str) -> pb.Post:
    with cluster.client() as client:

        def published() -> pb.Post | None:
            post = client.get_post(post_id)
            return post if post.status == pb.POST_STATUS_PUBLISHED else None

        return wait_until(f"{post_id} published", published, PUBLISH_TIMEOUT_S)


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_a_real_worker_and_the_cli_over_tls(tmp_path: Path, mutual: bool) -> None:
    pki = make_pki(tmp_path / "pki", clients=["ops", "tls-worker"])
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    env = {"POSTROOM_CA": str(pki.ca)}
    worker_env: dict[str, str] = {}
    if mutual:
        args += ["--tls-client-ca", str(pki.ca)]
        ops_cert, ops_key = pki.client("ops")
        env |= {"POSTROOM_TLS_CERT": str(ops_cert), "POSTROOM_TLS_KEY": str(ops_key)}
        cert, key = pki.client("tls-worker")
        worker_env = {"POSTROOM_TLS_CERT": str(cert), "POSTROOM_TLS_KEY": str(key)}
    config = ClusterConfig(auth=True, coordinator_args=args, env=env)
    with LocalCluster(tmp_path / "cluster", config) as cluster:
        cluster.start_sandbox()
        cluster.start_coordinator()
        cluster.start_worker("tls-worker", platforms=["sandbox:acme"], env=worker_env)
        cluster.wait_online(["tls-worker"])
        with cluster.client() as client:
            post_id = cluster.publish(client, "over TLS", ["sandbox:acme"])
        post = wait_published(cluster, post_id)
        assert post.target_states[0].result_url
        assert cluster.access is not None
        token = {"POSTROOM_TOKEN": cluster.access.admin_token}
        shown = cli(cluster.coordinator_address, "post", "show", post_id, env={**env, **token})
        assert shown.returncode == 0, shown.stderr
        assert "PUBLISHED" in shown.stdout
        # The CLI without the CA: it dials plaintext to loopback, and the TLS port hangs up.
        plain = cli(cluster.coordinator_address, "post", "list", env=token)
        assert plain.returncode == 1
        assert "UNAVAILABLE" in plain.stderr and "--ca" in plain.stderr


# ---- canaries ----------------------------------------------------------------------------------


def texts(paths: Sequence[Path]) -> Iterator[tuple[str, str]]:
    for path in paths:
        yield str(path), path.read_text(errors="replace")


def test_no_secret_shows_up_in_any_log_or_listing(tmp_path: Path) -> None:
    """Every credential place holds a live secret (the operator tokens, the device tokens, the
    sandbox's admin token); we use them, misuse them, revoke them, then search everything the
    processes printed and every listing for them."""
    workdir = tmp_path / "cluster"
    with LocalCluster(workdir, ClusterConfig(auth=True)) as cluster:
        cluster.start_sandbox()
        cluster.start_coordinator()
        access = cluster.access
        assert access is not None
        cluster.start_worker("canary-1", platforms=["sandbox"])
        cluster.wait_online(["canary-1"])
        with cluster.client() as client:
            post_id = cluster.publish(client, "canary", ["sandbox:acme", "sandbox:beta"])
            wait_published(cluster, post_id)
            author = client.create_token("canary-author", ac.ROLE_AUTHOR).secret
            client.revoke_token("canary-author")
            spare = client.enroll_device("canary-2", [pb.Target(platform="sandbox", account="*")])
        with cluster.sandbox_admin() as admin:
            assert len(admin.posts()) == 2
        with SandboxAdmin(cluster.sandbox_url, token="wrong") as intruder:
            with pytest.raises(AdminError) as refused:
                intruder.posts()
            assert refused.value.status == 401
        # Misuse: a revoked operator token, a device token where an operator token belongs, a
        # worker with another device's token.
        env = {"POSTROOM_TOKEN": author}
        assert cli(cluster.coordinator_address, "post", "list", env=env).returncode == 1
        env = {"POSTROOM_TOKEN": spare.secret}
        assert cli(cluster.coordinator_address, "post", "list", env=env).returncode == 1
        impostor = cluster._spawn(  # a worker the cluster did not enroll
            "impostor",
            [sys.executable, "-m", "worker.main", "--coordinator", cluster.coordinator_address,
             "--device-id", "impostor", "--platform", "sandbox",
             f"--sandbox-url={cluster.sandbox_url}", "--metrics-listen", "127.0.0.1:0"],
            {"POSTROOM_DEVICE_TOKEN": spare.secret},
        )  # fmt: skip
        assert impostor.popen.wait(START_TIMEOUT_S) == 2
        env = {"POSTROOM_TOKEN": access.admin_token}
        listings = [
            cli(cluster.coordinator_address, *args, env=env).stdout
            for args in (
                ["audit", "export"],
                ["--json", "job", "list"],
                ["--json", "device", "list"],
                ["--json", "device", "enrollments", "--all"],
                ["--json", "token", "list", "--all"],
                ["--json", "post", "show", post_id],
            )
        ]
        revoked = cli(cluster.coordinator_address, "device", "revoke", "canary-1", env=env)
        assert revoked.returncode == 0, revoked.stderr
        worker = cluster.workers["canary-1"]
        assert worker.popen.wait(START_TIMEOUT_S) == 2  # revoked: one line, exit 2
        assert "revoked" in worker.log_tail(3)
    secrets = access.known_secrets() | {
        "revoked author token": author,
        "device token of canary-2": spare.secret,
    }
    assert len(secrets) == 6 and all(len(s) > 20 for s in secrets.values())
    logs = sorted(workdir.glob("*.log"))
    assert {p.stem for p in logs} >= {"sandbox", "coordinator", "canary-1", "impostor"}
    found = [
        (what, where)
        for where, text in [*texts(logs), *(("listing", x) for x in listings)]
        for what, secret in secrets.items()
        if secret in text
    ]
    assert found == []
    assert any("DEVICE_REVOKED" in x or "TOKEN_REVOKED" in x for x in listings)
