"""The coordinator's actor outlives a bug met by one event: a worker event or an operator command
that raises something unexpected is refused and logged, and every other event goes on. (The edge
checks keep hostile input from getting that far; this is the net under them.)"""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from conftest import coordinator_server, publish

from coordinator import operator_commands as op
from coordinator import step
from coordinator.domain import Target
from coordinator.errors import CoordinatorError
from coordinator.leasing import commands
from coordinator.leasing.effects import Effects
from postroom.v1 import publishing_pb2_grpc


def _bug(state: step.CoordinatorState, cmd: commands.Ack, now: float) -> Effects:
    raise ZeroDivisionError("a bug in handling one event")


def _command_bug(state: step.CoordinatorState, cmd: op.ReopenGate, now: float) -> Effects:
    raise KeyError("a bug in one command")


@pytest.mark.anyio
async def test_one_failing_event_or_command_is_refused_and_the_actor_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(step._HANDLERS, commands.Ack, _bug)  # a bug in one event's handler
    monkeypatch.setitem(step._HANDLERS, op.ReopenGate, _command_bug)  # and in a command's
    async with (
        coordinator_server(tmp_path) as env,
        grpc.aio.insecure_channel(env.address) as channel,
    ):
        stub = publishing_pb2_grpc.PublishingStub(channel)
        await env.coordinator.post(commands.Ack("s-1", "j-1", 1))  # a worker message's command

        with pytest.raises(CoordinatorError) as refused:
            await env.coordinator.command(op.ReopenGate(Target("sandbox", "a"), "user:op"))
        assert refused.value.status_code is grpc.StatusCode.INTERNAL
        assert "incident" in str(refused.value)
        # Everything else still works, through the same actor.
        post = await publish(stub, text="after the bugs")
        assert post.target_states
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("worker event failed" in r.getMessage() for r in errors)
        assert any("command failed" in r.getMessage() for r in errors)
