"""Real network partitions for the tests and `make chaos`: workers in Linux network namespaces.

    with NetLab() as lab:                            # a bridge holding the hub address 10.200.X.1
        config = ClusterConfig(host=lab.hub)         # sandbox and coordinator listen there
        node = lab.add_node("w1")                    # a namespace + a veth pair on the bridge
        cluster.start_worker("w1", wrap=node.wrap)   # `ip netns exec NS python -m worker.main`
        node.cut(port)           # drop the worker <-> hub:port packets both ways, silently
        node.cut(port, "out")    # one way: the worker's packets are lost, it still hears
        node.slow(loss=0.2, rate_kbit=64)            # a slow, lossy link (netem where the
        node.heal()                                  # kernel has it); heal() undoes it all

Only what the lab made is touched: one bridge, its veth pairs and namespaces, addresses from
10.200.X.0/24 (X picked under a lock so concurrent labs never share one), and iptables rules
inside the lab's own namespaces. A namespace has no route but its /24: nothing outside the lab
is reachable from it. `close()` (the context exit) deletes all of it, also when a test fails; a
lab whose process died is cleaned up by the next lab that starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

Direction = Literal["both", "out", "in"]

SUBNET_PREFIX = "10.200"
STATE_DIR = Path("/run/postroom-netlab")
MAX_NODES = 200
_CHAIN_CUT = "PR_CUT"
_CHAIN_LOSS = "PR_LOSS"


class NetLabError(Exception):
    """A command of the lab failed; the message has the command and its output."""


def netlab_missing() -> str | None:
    """Why a lab cannot be made here (for a test's skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install iproute2 iptables)"
    probe = f"pr-probe-{os.getpid()}"
    try:
        _run(["ip", "netns", "add", probe])
    except NetLabError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "netns", "exec", probe, "iptables", "-S"])
    except NetLabError as exc:
        return f"iptables does not work in a namespace: {exc}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


def _run(argv: Sequence[str], *, check: bool = True) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise NetLabError(f"{' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


@dataclass(slots=True)
class Node:
    """One namespace: its processes reach the hub over their own veth pair only."""

    lab: NetLab
    name: str
    netns: str
    index: int
    host_if: str  # the root-namespace end, a bridge port
    ns_if: str
    address: str
    # The cuts applied now: (port or None, the iptables match), in the order they were made.
    cuts: list[tuple[int | None, list[str]]] = field(default_factory=list)
    slowed: bool = False

    @property
    def wrap(self) -> list[str]:
        """The argv prefix that runs a command inside this namespace."""
        return ["ip", "netns", "exec", self.netns]

    def run(self, *argv: str, check: bool = True) -> str:
        """Run a command inside this namespace; its stdout."""
        return _run([*self.wrap, *argv], check=check)

    def cut(
        self, port: int | None = None, direction: Direction = "both", *, data_only: bool = False
    ) -> None:
        """Drop, silently, the packets between this node and the hub (only those of `port` when
        given): "out" loses what the node sends, "in" what it would hear, "both" both. With
        `data_only`, only TCP segments that carry data (PSH) are lost: connections still open,
        and what is written on them stays in the sender's retransmission queue. Adds to any cut
        already applied."""
        hub = self.lab.hub
        tcp = ["-p", "tcp"] if port or data_only else []
        psh = ["--tcp-flags", "PSH", "PSH"] if data_only else []
        rules: list[list[str]] = []
        if direction in ("both", "out"):
            rules.append(["-d", hub, *tcp, *(["--dport", str(port)] if port else []), *psh])
        if direction in ("both", "in"):
            rules.append(["-s", hub, *tcp, *(["--sport", str(port)] if port else []), *psh])
        for rule in rules:
            self.run("iptables", "-A", _CHAIN_CUT, *rule, "-j", "DROP")
            self.cuts.append((port, rule))

    def heal(self, port: int | None = None) -> None:
        """Undo the cuts of `port`; without one, every cut and `slow`: the link is whole."""
        if port is None:
            self.run("iptables", "-F", _CHAIN_CUT)
            self.cuts.clear()
            self.fast()
            return
        for cut in [c for c in self.cuts if c[0] == port]:
            self.run("iptables", "-D", _CHAIN_CUT, *cut[1], "-j", "DROP")
            self.cuts.remove(cut)

    @property
    def partitioned(self) -> bool:
        """Cut or slowed now."""
        return bool(self.cuts) or self.slowed

    def slow(self, *, loss: float = 0.0, delay_ms: int = 0, rate_kbit: int = 0) -> str:
        """A bad link both ways: `loss` (0-1) of the packets dropped at random, each way, and
        `delay_ms` of latency where the kernel has netem; without netem, a `rate_kbit` bandwidth
        cap (htb) gives queueing delay instead. Returns what was applied."""
        self.fast()
        applied: list[str] = []
        netem = delay_ms > 0 and self.lab.has_netem()
        if netem:
            spec = ["delay", f"{delay_ms}ms", *(["loss", f"{loss * 100:.1f}%"] if loss else [])]
            self.run("tc", "qdisc", "add", "dev", self.ns_if, "root", "netem", *spec)
            _run(["tc", "qdisc", "add", "dev", self.host_if, "root", "netem", *spec])
            applied.append(f"netem {' '.join(spec)}")
        else:
            if loss > 0:
                for flag in ("-d", "-s"):  # to the hub, from the hub
                    self.run(
                        "iptables", "-A", _CHAIN_LOSS, flag, self.lab.hub,
                        "-m", "statistic", "--mode", "random", "--probability", f"{loss:.4f}",
                        "-j", "DROP",
                    )  # fmt: skip
                applied.append(f"loss {loss:.0%}")
            rate = rate_kbit or (64 if delay_ms else 0)
            if rate:
                self._htb(self.ns_if, rate, in_ns=True)
                self._htb(self.host_if, rate, in_ns=False)
                applied.append(f"rate {rate}kbit")
        self.slowed = True
        return ", ".join(applied) or "nothing"

    def _htb(self, dev: str, rate_kbit: int, *, in_ns: bool) -> None:
        prefix = self.wrap if in_ns else []
        rate = f"{rate_kbit}kbit"
        _run([*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
              "default", "10"])  # fmt: skip
        _run([*prefix, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10",
              "htb", "rate", rate, "ceil", rate, "quantum", "1514"])  # fmt: skip

    def fast(self) -> None:
        """Undo `slow`."""
        if not self.slowed:
            return
        self.run("iptables", "-F", _CHAIN_LOSS)
        self.run("tc", "qdisc", "del", "dev", self.ns_if, "root", check=False)
        _run(["tc", "qdisc", "del", "dev", self.host_if, "root"], check=False)
        self.slowed = False


class NetLab:
    """A bridge with the hub address and one namespace per node; see the module docstring."""

    def __init__(self) -> None:
        self.subnet = -1
        self.bridge = ""
        self.nodes: dict[str, Node] = {}
        self._netem: bool | None = None

    @property
    def hub(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet}.1"

    def has_netem(self) -> bool:
        """Whether this kernel has the netem qdisc (minimal VM kernels often do not)."""
        if self._netem is None:
            probe = f"prn{self.subnet}"
            _run(["ip", "link", "add", probe, "type", "veth", "peer", "name", f"{probe}p"])
            try:
                args = ["tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms"]
                self._netem = subprocess.run(args, capture_output=True).returncode == 0
            finally:
                _run(["ip", "link", "del", probe], check=False)
        return self._netem

    def open(self) -> NetLab:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        with _locked(STATE_DIR / "lock"):
            _sweep_dead_labs()
            used = _used_subnets()
            free = [x for x in range(1, 255) if x not in used]
            if not free:
                raise NetLabError(f"no free {SUBNET_PREFIX}.X.0/24 subnet for a lab")
            self.subnet = free[(os.getpid() * 7) % len(free)]
            self.bridge = f"prb{self.subnet}"
            (STATE_DIR / f"{self.subnet}.pid").write_text(f"{os.getpid()}\n")
            try:
                _run(["ip", "link", "add", self.bridge, "type", "bridge"])
                _run(["ip", "addr", "add", f"{self.hub}/24", "dev", self.bridge])
                _run(["ip", "link", "set", self.bridge, "up"])
            except BaseException:
                self.close()
                raise
        return self

    def add_node(self, name: str) -> Node:
        """A new namespace on the bridge, named after `name` (unique in this lab)."""
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists")
        index = len(self.nodes) + 1
        if index > MAX_NODES:
            raise NetLabError(f"at most {MAX_NODES} nodes in a lab")
        x = self.subnet
        node = Node(
            lab=self,
            name=name,
            netns=f"postroom-{x}-{index}",
            index=index,
            host_if=f"prv{x}h{index}",
            ns_if=f"prv{x}n{index}",
            address=f"{SUBNET_PREFIX}.{x}.{index + 1}",
        )
        self.nodes[name] = node
        ns, ns_if = node.netns, node.ns_if
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", node.host_if, "type", "veth", "peer", "name", ns_if])
        _run(["ip", "link", "set", node.host_if, "master", self.bridge])
        _run(["ip", "link", "set", node.host_if, "up"])
        _run(["ip", "link", "set", ns_if, "netns", ns])
        _run(["ip", "-n", ns, "addr", "add", f"{node.address}/24", "dev", ns_if])
        _run(["ip", "-n", ns, "link", "set", ns_if, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])  # the worker's own /metrics port
        for chain in (_CHAIN_CUT, _CHAIN_LOSS):
            node.run("iptables", "-N", chain)
            for hook in ("INPUT", "OUTPUT"):
                node.run("iptables", "-A", hook, "-j", chain)
        return node

    def close(self) -> None:
        """Delete every namespace, link and the bridge; safe to call twice, never raises."""
        if self.subnet < 0:
            return
        _teardown(self.subnet)
        self.nodes.clear()
        with contextlib.suppress(OSError):
            (STATE_DIR / f"{self.subnet}.pid").unlink()

    def __enter__(self) -> NetLab:
        return self.open()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _used_subnets() -> set[int]:
    used: set[int] = set()
    for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines():
        for word in line.split():
            if word.startswith(f"{SUBNET_PREFIX}."):
                used.add(int(word.split(".")[2]))
    for path in STATE_DIR.glob("*.pid"):
        if path.stem.isdigit():
            used.add(int(path.stem))
    return used


def _sweep_dead_labs() -> None:
    """Tear down the labs of processes that are gone (killed before they could clean up)."""
    for path in STATE_DIR.glob("*.pid"):
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid):
            continue
        if path.stem.isdigit():
            _teardown(int(path.stem))
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _teardown(subnet: int) -> None:
    """Delete lab `subnet`'s namespaces, veth pairs and bridge. A namespace can outlive its name
    while a socket in it drains, keeping its veth pair: so the host ends are deleted too."""
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"postroom-{subnet}-"):
            _run(["ip", "netns", "del", name], check=False)
    for line in _run(["ip", "-o", "link", "show"], check=False).splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            ifname = parts[1].strip().split("@")[0]
            if ifname.startswith(f"prv{subnet}h"):
                _run(["ip", "link", "del", ifname], check=False)
    _run(["ip", "link", "del", f"prb{subnet}"], check=False)
