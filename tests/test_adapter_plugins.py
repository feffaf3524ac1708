"""Another package adds a platform through the `postroom.adapters` entry-point group, without a
change to postroom (README: "Add a platform").

The plug-in here is installed the way pip leaves a package: a module and a `*.dist-info` folder
with its `entry_points.txt`, in a folder on PYTHONPATH. The coordinator (which accepts targets on
the plug-in's platform) and the real `postroom worker` (which serves `--platform NAME:ACCOUNT`
through the plug-in's adapter, no sandbox) run as processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_until

from postroom.v1 import types_pb2 as pb
from postroom_cli.cluster import Child, ClusterConfig, LocalCluster

PLATFORM = "plugboard"
ADAPTER = '''
"""A job adapter for the "plugboard" platform: it publishes by appending a line to a file."""

import os

from worker.adapters.base import JobSpec, Prepared, Published


class PlugboardAdapter:
    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.path = os.environ["PLUGBOARD_FILE"]

    def _find(self, job: JobSpec) -> Published | None:
        try:
            with open(self.path) as f:
                if any(line.split()[0] == job.platform_key for line in f):
                    return Published(post_id=f"pb-{job.platform_key}", url=f"plugboard://{job.account}")
        except FileNotFoundError:
            pass
        return None

    async def prepare(self, job: JobSpec) -> Prepared:
        return Prepared(payload={"text": job.text}, summary=f"pin {job.text!r} up")

    async def screenshot(self, label: str) -> bytes | None:
        return None

    async def commit(self, job: JobSpec, prepared: Prepared) -> Published:
        with open(self.path, "a") as f:
            f.write(f"{job.platform_key} {job.account} {job.text}\\n")
        found = self._find(job)
        assert found is not None
        return found

    async def verify(self, job: JobSpec) -> Published | None:
        return self._find(job)

    async def check_login(self, account: str) -> bool:
        return True

    async def close(self) -> None:
        return None
'''


def install_plugin(folder: Path, name: str, entry: str) -> Path:
    """A package as pip installs it: the module and its dist-info, entry point included."""
    folder.mkdir(parents=True, exist_ok=True)
    # pip's folder name escapes "-" as "_": importlib.metadata reads the name up to the first
    # "-" and keeps one distribution per name (so "postroom-plugboard-1.0" would be "postroom").
    dist = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[postroom.adapters]\n{entry}\n")
    return folder


def worker_argv(coordinator: str, device: str, *platforms: str) -> list[str]:
    """The real `postroom worker` command line (the CLI's own entry point)."""
    argv = [sys.executable, "-m", "postroom_cli", "worker", "--coordinator", coordinator]
    argv += ["--device-id", device, "--metrics-listen", "127.0.0.1:0"]
    return argv + [arg for p in platforms for arg in ("--platform", p)]


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    folder = install_plugin(
        tmp_path / "site", "postroom-plugboard", f"{PLATFORM} = plugboard:PlugboardAdapter"
    )
    (folder / "plugboard.py").write_text(ADAPTER)
    return folder


@pytest.fixture
def cluster(tmp_path: Path, plugin_path: Path) -> Iterator[LocalCluster]:
    env = {
        "PYTHONPATH": os.pathsep.join([str(plugin_path), os.environ.get("PYTHONPATH", "")]),
        "PLUGBOARD_FILE": str(tmp_path / "plugboard.txt"),
    }
    config = ClusterConfig(heartbeat_interval_s=0.5, lease_ttl_s=1.5, env=env)
    with LocalCluster(tmp_path / "cluster", config) as c:
        c.start_coordinator()
        yield c


def test_a_plugged_in_platform_is_published_to_by_the_real_worker(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    argv = worker_argv(cluster.coordinator_address, "plug-w1", f"{PLATFORM}:corkboard")
    log_path = tmp_path / "plug-w1.log"
    env = {**os.environ, **cluster.config.env}
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    cluster.workers["plug-w1"] = Child("plug-w1", argv, log_path, popen)  # stopped with the rest
    cluster.wait_online(["plug-w1"])

    with cluster.client() as client:
        post_id = cluster.publish(client, "Lost cat, answers to Tom", [f"{PLATFORM}:corkboard"])

        def succeeded() -> pb.Job | None:
            [target] = client.get_post(post_id).target_states
            job = client.get_job(target.job_id)
            return job if job.status == pb.JOB_STATUS_SUCCEEDED else None

        job = wait_until("the plug-in's job to succeed", succeeded, 30)
    published = (tmp_path / "plugboard.txt").read_text().splitlines()
    assert published == [f"{job.platform_key} corkboard Lost cat, answers to Tom"]
    assert (job.result_post_id, job.result_url) == (
        f"pb-{job.platform_key}",
        "plugboard://corkboard",
    )
    assert f"platform {PLATFORM}: served by the plug-in" in log_path.read_text()
    assert cluster.workers["plug-w1"].stop() == 0


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (None, "--platform needs --sandbox-url"),  # not installed: nothing serves it
        (
            f"{PLATFORM} = no_such_module:Adapter",
            f"plug-in {PLATFORM} = no_such_module:Adapter cannot be loaded: ModuleNotFoundError",
        ),
    ],
)
def test_a_worker_without_a_usable_plugin_says_so_at_start(
    tmp_path: Path, entry: str | None, says: str
) -> None:
    env = dict(os.environ)
    if entry is not None:
        site = install_plugin(tmp_path / "site", "postroom-broken", entry)
        env["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    # Refused before it dials: nothing listens at this address.
    argv = worker_argv("127.0.0.1:9", "plug-w2", f"{PLATFORM}:corkboard")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert says in proc.stderr, proc.stderr
