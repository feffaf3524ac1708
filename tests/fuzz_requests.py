"""Hypothesis strategies for hostile requests: any protobuf message of the wire contract, built
field by field from its descriptor, so every RPC (also ones added later) is covered.

Values are drawn to hit the edges the coordinator must survive: ids that exist and ids that do
not, megabyte strings, control characters, RFC 3339 times at and beyond years 1 and 9999, enum
numbers no version knows, int64 extremes, target lists from empty to ten thousand, page tokens
issued, edited and made up. `FUZZ_EXAMPLES` (env `POSTROOM_FUZZ_EXAMPLES`) sets how many
examples each test draws; `make fuzz` runs with many more.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from coordinator.domain import KNOWN_PLATFORMS

FUZZ_EXAMPLES = int(os.environ.get("POSTROOM_FUZZ_EXAMPLES", "100"))

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1

# Times a client may write, from the plausible to the absurd.
_TIMES = st.sampled_from(
    [
        "2026-11-24T18:00:00Z",
        "2026-11-24T18:00:00+01:00",
        "0001-01-01T00:00:00+05:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-05:00",
        "9999-12-31T23:59:59Z",
        "1969-12-31T23:59:59Z",
        "2100-01-01T00:00:00Z",
        "2026-11-24T18:00:00",
        "2026-02-30T00:00:00Z",
        "yesterday",
        "",
        " ",
        "2026-11-24T18:00:00.123456789Z",
        "+275760-09-13T00:00:00Z",
    ]
) | st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat())

_HUGE = st.sampled_from([1_000, 4_097, 100_001, 300_000]).map(lambda n: "x" * n)
_NASTY = st.sampled_from(
    ["", " ", "*", "\x00", "a\nb", "\u202e", "😀" * 50, "../../etc/passwd", "%s%n", "'; --"]
)
_TEXT = st.text(max_size=40) | _NASTY | _HUGE


def _enum(field: FieldDescriptor) -> st.SearchStrategy[int]:
    assert field.enum_type is not None
    known = [v.number for v in field.enum_type.values]
    return st.sampled_from(known) | st.integers(-3, 300) | st.sampled_from([INT32[0], INT32[1]])


def _integer(field: FieldDescriptor, pools: Pools) -> st.SearchStrategy[int]:
    t = field.type
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        lo, hi = INT64
    elif t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        lo, hi = 0, UINT64_MAX
    elif t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        lo, hi = 0, 2**32 - 1
    else:
        lo, hi = INT32
    edges = sorted({lo, hi, 0, 1, -1 if lo < 0 else 2, 2**62 if hi >= 2**62 else hi})
    out = st.sampled_from(edges) | st.integers(min_value=max(lo, -5), max_value=min(hi, 5000))
    if field.name == "lease_epoch" and pools.epochs:
        out = st.sampled_from(pools.epochs) | out
    elif field.name.endswith("_unix_ms") and pools.now_ms:
        now = pools.now_ms  # just before, at, after now: a platform's retry time, a log's
        out = st.sampled_from([now - 1, now, now + 1_000, now + 86_400_000, 2**62]) | out
    elif field.name in ("offset", "total_size"):
        out = st.sampled_from([16 * 1024 * 1024, 16 * 1024 * 1024 + 1, 2**40]) | out
    return out


class Pools:
    """Real values the strategies mix in (ids of objects that exist, tokens this server issued),
    so requests reach past the "not found" answer into the code behind it."""

    def __init__(self) -> None:
        self.ids: list[str] = ["p-000000000000", "j-000000000000-0", "0" * 64]
        self.page_tokens: list[str] = []
        self.accounts: list[str] = ["acme", "fuzz-a"]
        self.epochs: list[int] = []
        self.now_ms = 0

    def ids_strategy(self) -> st.SearchStrategy[str]:
        return st.sampled_from(self.ids) | _TEXT

    def tokens_strategy(self) -> st.SearchStrategy[str]:
        issued = st.sampled_from(self.page_tokens) if self.page_tokens else st.nothing()
        edited = issued.map(lambda t: t[:-1] + ("A" if t[-1:] != "A" else "B"))
        made_up = st.sampled_from(["1", "99999999999999999999999", "-5", "MTAw", "0.abc", "=="])
        return issued | edited | made_up | _TEXT


def _string(field: FieldDescriptor, pools: Pools) -> st.SearchStrategy[str]:
    name = field.name
    if name.endswith("_id") or name in ("id", "token", "name"):
        return pools.ids_strategy()
    if name in ("scheduled_at", "since"):
        return _TIMES
    if name == "page_token":
        return pools.tokens_strategy()
    if name == "platform":
        return st.sampled_from(sorted(KNOWN_PLATFORMS)) | _TEXT
    if name == "account":
        return st.sampled_from(pools.accounts) | _TEXT
    if name == "content_hash":
        return st.sampled_from(["", "0" * 64, "g" * 64, "ab"]) | _TEXT
    if name == "text":
        return st.sampled_from(["hello", "a post with a link https://example.com"]) | _TEXT
    return _TEXT


def _target(pools: Pools) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {
            "platform": st.sampled_from(sorted(KNOWN_PLATFORMS)) | _TEXT,
            "account": st.sampled_from(pools.accounts) | _TEXT,
        }
    )


def _many(counts: Sequence[int], one: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Long lists of one short value: long enough to pass a bound, small enough to send."""
    return st.tuples(st.sampled_from(counts), one).map(lambda pair: [pair[1]] * pair[0])


def _repeated(field: FieldDescriptor, item: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    small = st.lists(item, max_size=4)
    short = st.text(max_size=12)
    if field.name in ("targets", "accounts", "capabilities"):
        # At, over and far over the per-post bound: 10,000 targets once stalled every RPC.
        target = st.fixed_dictionaries(
            {"platform": st.sampled_from(sorted(KNOWN_PLATFORMS)), "account": short}
        )
        many_targets = _many([50, 51, 10_000], target)
        distinct = st.sampled_from([50, 51, 10_000]).map(
            lambda n: [{"platform": "sandbox", "account": f"a{i}"} for i in range(n)]
        )
        return small | many_targets | distinct
    if field.name == "media":
        return small | _many([21, 10_001], short)
    if field.name in ("active", "held_jobs"):
        return small | _many([1_001, 10_001], st.fixed_dictionaries({"job_id": short}))
    return small


def field_values(field: FieldDescriptor, pools: Pools, depth: int) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "postroom.v1.Target":
            item: st.SearchStrategy[Any] = _target(pools)
        elif depth > 2:
            item = st.just({})
        else:
            item = dicts(field.message_type, pools, depth + 1)
    elif t == FieldDescriptor.TYPE_STRING:
        item = _string(field, pools)
    elif t == FieldDescriptor.TYPE_BYTES:
        item = st.binary(max_size=64) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"x" * 300_000])
    elif t == FieldDescriptor.TYPE_BOOL:
        item = st.booleans()
    elif t == FieldDescriptor.TYPE_ENUM:
        item = _enum(field)
    elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        item = st.floats(allow_nan=True, allow_infinity=True, width=32)
    else:
        item = _integer(field, pools)
    if field.is_repeated:
        return _repeated(field, item)
    return item


def dicts(descriptor: Descriptor, pools: Pools, depth: int = 0) -> st.SearchStrategy[Any]:
    """Field values of `descriptor` as a dict (any subset of its fields set)."""
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.fixed_dictionaries(
            {},
            optional={
                "seconds": st.sampled_from([-62_135_596_801, 0, 253_402_300_800, 2**62]),
                "nanos": st.integers(0, 999_999_999),
            },
        )
    # proto3 `optional` fields are synthetic oneofs named "_<field>": plain fields here.
    oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]
    in_oneof = {f.name for o in oneofs for f in o.fields}
    plain = [f for f in descriptor.fields if f.name not in in_oneof]
    optional = {f.name: field_values(f, pools, depth) for f in plain}
    base = st.fixed_dictionaries({}, optional=optional)
    if not oneofs:
        return base
    # One member of each real oneof.
    choices = [
        st.one_of([_one(f, field_values(f, pools, depth)) for f in o.fields]) for o in oneofs
    ]
    return st.tuples(base, *choices).map(_merge)


def _one(field: FieldDescriptor, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return values.map(lambda v: {field.name: v})


def _merge(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {k: v for p in parts for k, v in p.items()}


# ---- plausible: every field a value a real client could send ---------------------------------

_PLAUSIBLE_TIMES = st.sampled_from(
    ["2026-11-24T18:00:00Z", "2027-01-15T08:00:00+01:00", "2030-06-01T12:00:00Z"]
)


def _plausible(field: FieldDescriptor, pools: Pools, depth: int) -> st.SearchStrategy[Any]:
    t, name = field.type, field.name
    if t == FieldDescriptor.TYPE_MESSAGE:
        assert field.message_type is not None
        if field.message_type.full_name == "postroom.v1.Target":
            item: st.SearchStrategy[Any] = st.fixed_dictionaries(
                {
                    "platform": st.sampled_from(["sandbox", "mastodon", "x", "linkedin"]),
                    "account": st.sampled_from(pools.accounts),
                }
            )
        elif depth > 2:
            item = st.just({})
        else:
            item = plausible_dicts(field.message_type, pools, depth + 1)
    elif t == FieldDescriptor.TYPE_STRING:
        if name.endswith("_id") or name in ("id", "token", "name"):
            item = st.sampled_from(pools.ids)
        elif name in ("scheduled_at", "since"):
            item = _PLAUSIBLE_TIMES
        elif name == "page_token":
            item = st.sampled_from(pools.page_tokens or [""])
        elif name == "platform":
            item = st.sampled_from(["sandbox", "mastodon", "x"])
        elif name == "account":
            item = st.sampled_from(pools.accounts)
        elif name == "media":
            item = st.sampled_from(["photo.png", "https://example.com/a.jpg"])
        else:
            item = st.sampled_from(["hello", "an operator", "a reason", "step"])
    elif t == FieldDescriptor.TYPE_BYTES:
        item = st.sampled_from([b"\x89PNG\r\n\x1a\n", b""])
    elif t == FieldDescriptor.TYPE_BOOL:
        item = st.booleans()
    elif t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        item = st.sampled_from([v.number for v in field.enum_type.values])
    elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        item = st.floats(0, 100)
    elif name == "lease_epoch" and pools.epochs:
        item = st.sampled_from(pools.epochs)
    else:
        item = st.integers(0, 5)
    if field.is_repeated:
        return st.lists(item, min_size=1, max_size=3)
    return item


def plausible_dicts(descriptor: Descriptor, pools: Pools, depth: int = 0) -> st.SearchStrategy[Any]:
    """Field values a real client could send (most fields set, none absurd)."""
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.fixed_dictionaries({"seconds": st.integers(1_700_000_000, 1_900_000_000)})
    oneofs = [o for o in descriptor.oneofs if not o.name.startswith("_")]
    in_oneof = {f.name for o in oneofs for f in o.fields}
    fields = {
        f.name: _plausible(f, pools, depth) for f in descriptor.fields if f.name not in in_oneof
    }
    base = st.fixed_dictionaries({}, optional=fields)
    choices = [st.one_of([_one(f, _plausible(f, pools, depth)) for f in o.fields]) for o in oneofs]
    return st.tuples(base, *choices).map(_merge)


def messages(descriptor: Descriptor, pools: Pools) -> st.SearchStrategy[Message]:
    """Hostile or plausible messages of `descriptor`, about half each: the plausible ones get
    past the first check into the code behind it."""
    cls = message_factory.GetMessageClass(descriptor)
    values = dicts(descriptor, pools) | plausible_dicts(descriptor, pools)
    return values.map(lambda v: _build(cls, v))


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    _fill(msg, values)
    return msg


def _fill(msg: Message, values: dict[str, Any]) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = fields[name]
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                container = getattr(msg, name)
                for item in value:
                    _fill(container.add(), item)
            else:
                _fill(getattr(msg, name), value)
                getattr(msg, name).SetInParent()
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)


def garbage() -> st.SearchStrategy[bytes]:
    """Bytes that are not a valid message of any type (or are, by chance: both are fine)."""
    return st.sampled_from([b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\x0f", b"\x08" * 11]) | (
        st.binary(min_size=1, max_size=64)
    )


Counts = dict[str, int]


def counter(counts: Counts, key: str) -> Callable[[], None]:
    def bump() -> None:
        counts[key] = counts.get(key, 0) + 1

    return bump


def summary(
    counts: Counts, order: Sequence[str] = (), codes: Mapping[str, Counts] | None = None
) -> str:
    """One line per key: its count, and how the inputs were answered when known."""
    keys = list(order) + sorted(k for k in counts if k not in order)
    width = max((len(k) for k in keys), default=0)
    lines = []
    for k in keys:
        seen = (codes or {}).get(k, {})
        answers = ", ".join(f"{c} {n}" for c, n in sorted(seen.items()))
        lines.append(f"{k:<{width}}  {counts.get(k, 0):>5}" + (f"  ({answers})" if seen else ""))
    return "\n".join(lines)
