"""Item 3: recovery. A worker process holding a job mid-run is SIGKILLed (or SIGSTOPped: hung);
how long until another worker holds the lease?

Per scenario a fresh coordinator with a 1 s heartbeat and a 3 s lease TTL. The victim is a child
process (`bench.wire hold`): it takes the job, acks it (3a, 3b) or also takes the commit permit
(3c), then sits on it, heartbeating. Only then does the rescuer, a lean session in this process
with a free slot, connect. Recovery = when the rescuer reads the job's new Assign (epoch + 1) -
when the signal was sent. The signal lands at a random (seeded) point of the victim's heartbeat
cycle, so 3b and 3c show their real spread.

- 3a SIGKILL before the commit permit: the stream breaks (EOF without Goodbye), the job is requeued
  at once. Target 1 s.
- 3b SIGSTOP (hung, stream still open): noticed by heartbeat silence after the TTL, then as 3a.
  Target TTL + 1 s.
- 3c SIGKILL after the commit permit (in doubt): by design the lease is kept until its deadline
  plus the expiry margin (1 s), then rerun with verify_first. Shown for completeness; its bound is
  TTL + margin after the last heartbeat.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any, Literal

import grpc

from bench.common import Children, Context, Figure, Publisher, cluster, say
from bench.wire import LeanSession

HEARTBEAT_S = 1.0
LEASE_TTL_S = 3.0
EXPIRY_MARGIN_S = 1.0
Scenario = Literal["kill", "stop", "kill_committed"]


def one_run(workdir: Path, scenario: Scenario, seed: int = 0) -> dict[str, Any]:
    # The signal lands at a random point of the victim's 1 s heartbeat cycle: how long a hung
    # worker goes unnoticed depends on how long before the signal it last heartbeat.
    settle_s = 0.5 + random.Random(f"{scenario}-{seed}").random() * HEARTBEAT_S
    with (
        cluster(workdir, heartbeat_s=HEARTBEAT_S, lease_ttl_s=LEASE_TTL_S) as c,
        Children(workdir) as kids,
    ):
        address = c.coordinator_address
        args = ["hold", "--address", address, "--device-id", "victim"]
        victim = kids.wire("victim", *args, *(["--commit"] if scenario == "kill_committed" else []))
        victim.wait_line("ready")

        async def drive() -> dict[str, Any]:
            pubr = Publisher(address)
            (post_id,) = await pubr.approved_posts(1, ["sandbox:recovery"], text="recovery")
            await pubr.schedule([post_id], lambda _i: None)
            await pubr.close()
            held = await asyncio.to_thread(victim.wait_line, "held", 10.0)
            _, job_id, epoch_text, _held_at = held.split()
            channel = grpc.aio.insecure_channel(address)
            got: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()

            def on_message(s: LeanSession, msg: Any, at: float) -> None:
                if msg.HasField("assign") and msg.assign.job_id == job_id and not got.done():
                    got.set_result((msg.assign.lease_epoch, at))

            rescuer = LeanSession(channel, "rescuer", slots=1, on_message=on_message)
            await rescuer.start()
            await asyncio.sleep(settle_s)  # the rescuer is idle; the victim heartbeats
            signum = signal.SIGSTOP if scenario == "stop" else signal.SIGKILL
            sent_at = time.time()
            victim.signal(signum)
            async with asyncio.timeout(LEASE_TTL_S + EXPIRY_MARGIN_S + 10):
                new_epoch, assigned_at = await got
            await rescuer.close()
            await channel.close(None)
            # Where the time went, from the coordinator's audit log (its clock, same machine).
            pubr = Publisher(address)
            phases = {}
            for action in ("DEVICE_DISCONNECTED", "JOB_STUCK_RECOVERY", "JOB_LEASED"):
                times = [t for t in await pubr.audit_times(action) if t >= sent_at - 0.001]
                if times:
                    phases[action] = round(min(times) - sent_at, 4)
            await pubr.close()
            return {
                "scenario": scenario,
                "signal": signal.Signals(signum).name,
                "recovery_s": round(assigned_at - sent_at, 4),
                "old_epoch": int(epoch_text),
                "new_epoch": new_epoch,
                "heartbeat_s": HEARTBEAT_S,
                "lease_ttl_s": LEASE_TTL_S,
                "signal_after_rescuer_s": round(settle_s, 3),
                "audit_after_signal_s": phases,
            }

        try:
            return asyncio.run(drive())
        finally:
            victim.signal(signal.SIGCONT)
            victim.signal(signal.SIGKILL)


def run(ctx: Context) -> list[Figure]:
    figs: dict[Scenario, Figure] = {
        "kill": Figure(
            "3a",
            "recovery_sigkill",
            "recovery after SIGKILL mid-job (before the "
            "commit permit): kill -> other worker holds the lease",
            "s",
            "<=",
            1.0,
            decimals=3,
        ),
        "stop": Figure(
            "3b",
            "recovery_sigstop",
            "recovery after SIGSTOP (hung), heartbeat 1 s, TTL 3 s",
            "s",
            "<=",
            LEASE_TTL_S + 1.0,
            "TTL + 1 s",
            decimals=3,
        ),
        "kill_committed": Figure(
            "3c",
            "recovery_sigkill_committed",
            "recovery after SIGKILL holding the commit permit "
            "(in doubt; waits for deadline + margin by design)",
            "s",
            "<=",
            LEASE_TTL_S + EXPIRY_MARGIN_S,
            "design bound: TTL + 1 s margin",
            decimals=3,
        ),
    }
    for scenario, fig in figs.items():
        for r in range(ctx.runs):
            res = one_run(ctx.workdir(f"recovery-{scenario}-{r}"), scenario, seed=r)
            say(
                f"  item {fig.item} run {r + 1}: {res['recovery_s']} s "
                f"(epoch {res['old_epoch']} -> {res['new_epoch']})"
            )
            fig.add(res["recovery_s"], res)
    return list(figs.values())
