"""Tests that need the local platform servers skip only where one truly cannot run, and never
in CI, where `make test` installs them: a CI run without them must fail, not pass quietly."""

from __future__ import annotations

import os

import pytest

from sandbox.local.mastodon import mastodon_mock_missing
from sandbox.local.pds import pds_missing
from sandbox.local.spirit import spirit_missing


def _require(missing: str | None) -> None:
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{missing} (CI must run these tests)")
    pytest.skip(missing)


def require_pds() -> None:
    _require(pds_missing())


def require_mastodon_mock() -> None:
    _require(mastodon_mock_missing())


def require_spirit() -> None:
    _require(spirit_missing())
