"""Stand-ins for the platforms whose real software does not run here (X, Meta, LinkedIn).

Each follows the platform's published contract (same paths, bodies, headers and error shapes)
and is a Starlette app of its own, mounted by `postroom sandbox` under its prefix, so a worker's
account `base_url` is e.g. `http://127.0.0.1:8787/x` and it calls `{base_url}/2/tweets`. Each
records every post it accepts (never de-duplicating a create unless the platform does) and
takes fault injections, both under `{prefix}/_standin/...`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.routing import Mount

# prefix -> "module:factory"; a factory takes `clock=` (Unix seconds) and returns an app.
STANDINS: dict[str, str] = {
    "x": "sandbox.standins.x:create_app",
    "meta": "sandbox.standins.meta:create_app",
    "linkedin": "sandbox.standins.linkedin:create_app",
}


def standin_app(prefix: str, *, clock: Callable[[], float]) -> Starlette:
    module_name, _, factory_name = STANDINS[prefix].partition(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    app = factory(clock=clock)
    assert isinstance(app, Starlette)
    return app


def standin_mounts(*, clock: Callable[[], float]) -> list[Mount]:
    mounts = []
    for prefix in STANDINS:
        try:
            mounts.append(Mount(f"/{prefix}", app=standin_app(prefix, clock=clock)))
        except ModuleNotFoundError as exc:  # TODO(issue 9): strict once all three exist
            if exc.name != STANDINS[prefix].partition(":")[0]:
                raise
    return mounts
