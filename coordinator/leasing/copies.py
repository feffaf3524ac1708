"""Cheap copies of the core's mutable records.

The core hands the store and the watchers a copy of a job (or post, or run) at every
transition, so what it changes later never reaches a batch already decided. `dataclasses.replace`
makes that copy through the generated `__init__` with keyword arguments and a loop over the
fields: ~5 us for a Job. Calling the class positionally with the values of an `attrgetter` is the
same shallow copy for ~1 us; a drain makes several per job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache
from operator import attrgetter
from typing import Any, TypeVar

T = TypeVar("T")


@cache
def _values(cls: type) -> Callable[[Any], tuple[Any, ...]] | None:
    """The getter of every field's value, in `__init__`'s positional order; None when the
    class cannot be rebuilt positionally (a field left out of __init__, or keyword-only)."""
    fields = dataclasses.fields(cls)
    if len(fields) < 2 or any(not f.init or f.kw_only for f in fields):
        return None
    return attrgetter(*(f.name for f in fields))


def snapshot(obj: T) -> T:
    """A shallow copy of a dataclass instance (as `dataclasses.replace(obj)`)."""
    values = _values(type(obj))  # type: ignore[arg-type]
    if values is None:
        return dataclasses.replace(obj)  # type: ignore[type-var]
    return type(obj)(*values(obj))
