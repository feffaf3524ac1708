"""What a worker sends, checked at the edge of the coordinator (the gateway) before the actor
sees it.

Two kinds of wrong input, two answers:

- **Garbage** (an id longer than any id postroom makes, a heartbeat listing more jobs than any
  worker holds, a flood of messages): no honest worker sends it. `Violation` ends that stream
  with INVALID_ARGUMENT or RESOURCE_EXHAUSTED; its jobs are recovered like any lost session's,
  and nobody else's are touched.
- **Odd but honest** (an error class or log level newer than this coordinator, a platform's
  absurd retry time, a long error message or URL): the message is *taken*, made safe (unknown
  enums map to their safe default and say so, text is cut to its limit, times outside the window
  are replaced), so a result is committed and never re-sent forever.

Pure functions and one small per-stream rate limiter; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from coordinator.domain import KNOWN_PLATFORMS, StepLogEntry
from coordinator.validation import MAX_ACCOUNT_CHARS, MAX_ID_CHARS, time_in_window
from postroom.v1 import types_pb2 as pb
from postroom.v1 import worker_gateway_pb2 as wg

# ---- limits (README "Limits") ---------------------------------------------------------------

# An honest worker sends ~8 messages a no-op job (ack, a log line a step, commit request,
# result); with batched writes one worker can finish ~1,000 jobs/s, and must not be cut off.
DEFAULT_MAX_MESSAGES_PER_S = 20_000.0
DEFAULT_BURST_MESSAGES = 40_000.0
# Declared sizes of the uploads a session has open at once (they are written to disk as they
# arrive; this bounds the disk a session can fill with unfinished uploads).
DEFAULT_MAX_UPLOAD_BYTES_PER_SESSION = 32 * 1024 * 1024
MAX_UPLOADS_PER_SESSION = 8
MAX_CAPABILITIES = 1_000
# Jobs a session holds at once: what a worker that stops reading can pile up in its outbox
# (an Assign carries the post's text), so this bounds that session's memory too.
MAX_SLOTS = 256
# Jobs a Hello or a Heartbeat may list: a worker holds at most its slots (and, briefly after a
# reconnect, a few more).
MAX_HELD_JOBS = 1_000
MAX_STEP_CHARS = 100
MAX_LOG_MESSAGE_CHARS = 4_000
MAX_ERROR_MESSAGE_CHARS = 4_000
MAX_URL_CHARS = 2_048
MAX_PLATFORM_POST_ID_CHARS = 512
MAX_SELECTOR_CHARS = 500
MAX_SHORT_TEXT_CHARS = 200  # goodbye reasons, versions, labels, content types
MAX_EXECUTION_TIME_MS = 7 * 24 * 3600 * 1000
# A worker's step log time more than this far from the coordinator's clock is not believed.
MAX_LOG_CLOCK_SKEW_S = 24 * 3600.0

_KNOWN_ERROR_CLASSES = frozenset(pb.ErrorClass.values())
_KNOWN_LOG_LEVELS = frozenset(pb.LogLevel.values())


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    max_messages_per_s: float = DEFAULT_MAX_MESSAGES_PER_S
    burst_messages: float = DEFAULT_BURST_MESSAGES
    max_upload_bytes_per_session: int = DEFAULT_MAX_UPLOAD_BYTES_PER_SESSION


class Violation(Exception):
    """The stream sent garbage: end it with `code` and this message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _invalid(message: str) -> Violation:
    return Violation(grpc.StatusCode.INVALID_ARGUMENT, message)


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- rate ----------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket: `burst` messages at once, refilled at `rate` per second. A message costs
    more the more work it brings (`cost`): a heartbeat listing hundreds of jobs, a big chunk."""

    def __init__(self, rate: float, burst: float, monotonic: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._monotonic = monotonic
        self._last = monotonic()

    def take(self, cost: float = 1.0) -> None:
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < cost:
            raise Violation(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {self._rate:g} messages per second on one stream (bursts of "
                f"{self._burst:g}); a worker never needs that many: slow down",
            )
        self._tokens -= cost


# ---- Hello ---------------------------------------------------------------------------------


def check_hello(hello: wg.Hello) -> None:
    """Sizes and shapes of a Hello; raises Violation. (Who may say it is the access layer's.)"""
    device = hello.device_id.strip()
    if len(device) > MAX_ID_CHARS or not device.isprintable():
        raise _invalid(
            f"Hello.device_id must be printable and at most {MAX_ID_CHARS} characters "
            "(--device-id NAME)"
        )
    if not 1 <= hello.slots <= MAX_SLOTS:
        raise _invalid(f"Hello.slots must be between 1 and {MAX_SLOTS} (--concurrency)")
    if not 0 <= hello.per_account_slots <= MAX_SLOTS:
        raise _invalid(
            f"Hello.per_account_slots is {hello.per_account_slots}; it must be between 0 (no "
            f"bound beyond slots) and {MAX_SLOTS} (jobs of one platform account at once)"
        )
    if len(hello.capabilities) > MAX_CAPABILITIES:
        raise _invalid(
            f"Hello lists {len(hello.capabilities)} capabilities; at most {MAX_CAPABILITIES}: "
            "serve a platform's every account with --platform PLATFORM"
        )
    for cap in hello.capabilities:
        if cap.platform not in KNOWN_PLATFORMS:
            shown = cut(cap.platform, 32)
            raise _invalid(
                f"unknown platform {shown!r} in Hello.capabilities; known: "
                + ", ".join(sorted(KNOWN_PLATFORMS))
            )
        account = cap.account
        if len(account) > MAX_ACCOUNT_CHARS or not account.isprintable():
            raise _invalid(
                f"an account of {cap.platform} in Hello.capabilities is not a printable name of "
                f"at most {MAX_ACCOUNT_CHARS} characters"
            )
    if len(hello.held_jobs) > MAX_HELD_JOBS:
        raise _invalid(f"Hello lists {len(hello.held_jobs)} held jobs; at most {MAX_HELD_JOBS}")
    for held in hello.held_jobs:
        check_id(held.job_id, "Hello.held_jobs.job_id")


# ---- per message ---------------------------------------------------------------------------


def cost(msg: wg.WorkerMessage) -> float:
    """What a message counts against its stream's rate (RateLimiter)."""
    kind = msg.WhichOneof("msg")
    if kind == "heartbeat":
        return 1.0 + len(msg.heartbeat.active) / 32
    if kind == "screenshot":
        return 1.0 + len(msg.screenshot.data) / 65_536
    return 1.0


def unbatch(msg: wg.WorkerMessage) -> Sequence[wg.WorkerMessage]:
    """The messages one wire message carries, in order (a batch inside a batch is handed on as it
    is, and refused as a message)."""
    if msg.WhichOneof("msg") != "batch":
        return (msg,)
    if not msg.batch.messages:
        raise _invalid("an empty WorkerMessage.batch: send at least one message in a batch")
    return msg.batch.messages


def check_id(value: str, name: str) -> None:
    if len(value) > MAX_ID_CHARS:
        raise _invalid(f"{name} is {len(value)} characters; ids are at most {MAX_ID_CHARS}")


def check_message(msg: wg.WorkerMessage) -> str | None:
    """The oneof kind of a message after checking its ids and list sizes (Violation if garbage);
    None for a message of a kind this coordinator does not know (a newer worker): ignored."""
    kind = msg.WhichOneof("msg")
    match kind:
        case "heartbeat":
            active = msg.heartbeat.active
            if len(active) > MAX_HELD_JOBS:
                raise _invalid(
                    f"Heartbeat lists {len(active)} active jobs; no worker holds more than "
                    f"{MAX_HELD_JOBS}"
                )
            for held in active:
                check_id(held.job_id, "Heartbeat.active.job_id")
        case "ack" | "log" | "commit_request" | "awaiting_confirm" | "result":
            check_id(getattr(msg, kind).job_id, f"{kind}.job_id")
        case "screenshot":
            check_id(msg.screenshot.job_id, "screenshot.job_id")
            check_id(msg.screenshot.upload_id, "screenshot.upload_id")
        case "login_check":
            check_id(msg.login_check.request_id, "login_check.request_id")
    return kind


def log_entry(entry: wg.JobLog, now: float) -> StepLogEntry:
    """A step log line made safe: cut to size, a level this coordinator knows, a believable time
    (else 0, which the core reads as "now")."""
    at = entry.at_unix_ms / 1000 if entry.at_unix_ms else 0.0
    if at and not (time_in_window(at) and abs(at - now) <= MAX_LOG_CLOCK_SKEW_S):
        at = 0.0
    level = entry.level if entry.level in _KNOWN_LOG_LEVELS else pb.LOG_LEVEL_INFO
    return StepLogEntry(
        step=cut(entry.step, MAX_STEP_CHARS),
        level=_LEVEL_NAMES.get(level, "INFO"),
        message=cut(entry.message, MAX_LOG_MESSAGE_CHARS),
        at=at,
    )


_LEVEL_NAMES = {
    pb.LOG_LEVEL_DEBUG: "DEBUG",
    pb.LOG_LEVEL_INFO: "INFO",
    pb.LOG_LEVEL_WARNING: "WARNING",
    pb.LOG_LEVEL_ERROR: "ERROR",
}


def job_result(r: wg.JobResult) -> wg.JobResult:
    """A copy of a result the core can take whatever a worker put in it. The retry time is left
    as sent: the retry policy bounds it (coordinator/retry.py), knowing the time now."""
    out = wg.JobResult()
    out.CopyFrom(r)
    if out.error_class not in _KNOWN_ERROR_CLASSES:
        # A class newer than this coordinator: retryable is the safe reading, and it is said.
        out.error_message = (
            f"(error class {out.error_class} unknown to this coordinator: treated as TRANSIENT) "
            + out.error_message
        )
        out.error_class = pb.ERROR_CLASS_TRANSIENT
    out.error_message = cut(out.error_message, MAX_ERROR_MESSAGE_CHARS)
    out.platform_post_id = cut(out.platform_post_id, MAX_PLATFORM_POST_ID_CHARS)
    out.url = cut(out.url, MAX_URL_CHARS)
    out.failed_step = cut(out.failed_step, MAX_STEP_CHARS)
    out.selector = cut(out.selector, MAX_SELECTOR_CHARS)
    out.execution_time_ms = min(max(0, out.execution_time_ms), MAX_EXECUTION_TIME_MS)
    if out.retry_at_unix_ms < 0:
        out.retry_at_unix_ms = 0
    return out


def login_check_result(r: wg.LoginCheckResult) -> wg.LoginCheckResult:
    out = wg.LoginCheckResult()
    out.CopyFrom(r)
    out.message = cut(out.message, MAX_ERROR_MESSAGE_CHARS)
    return out
