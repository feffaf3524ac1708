"""Rate-limit gates and quotas: when a (platform, account) may get a new lease, and what
`postroom ratelimit` shows about it (GateBook.views)."""

from __future__ import annotations

import pytest

from coordinator.domain import GateRecord, Target
from coordinator.gates import GateBook, Quota, parse_quota

NOW = 1_800_000_000.0
ACME = Target("sandbox", "acme")
OTHER = Target("sandbox", "other")
HOUR = 3600.0


def view(book: GateBook, target: Target, now: float) -> tuple[bool, float, str, int, int]:
    (v,) = [v for v in book.views(now) if v.target == target]
    return v.closed, v.closed_until, v.reason, v.hits, v.quota_used


# ---- rate-limit closes -------------------------------------------------------------------------


def test_an_unknown_gate_is_open() -> None:
    book = GateBook()
    assert book.is_open(ACME, NOW)
    assert book.open_at(ACME, NOW) == NOW


def test_close_holds_until_the_instant_then_opens() -> None:
    book = GateBook()
    rec = book.close(ACME, NOW + 60, "429 rate limited")
    assert rec == GateRecord(ACME, NOW + 60, "429 rate limited", 1)
    assert not book.is_open(ACME, NOW)
    assert not book.is_open(ACME, NOW + 59.9)
    assert book.open_at(ACME, NOW) == NOW + 60
    assert book.is_open(ACME, NOW + 60)
    assert book.is_open(OTHER, NOW)  # another account of the platform is not affected


def test_reopen_opens_at_once_and_keeps_the_hit_count() -> None:
    book = GateBook()
    book.close(ACME, NOW + 600, "429")
    assert book.reopen(ACME) == GateRecord(ACME, 0.0, "", 1)
    assert book.is_open(ACME, NOW)


def test_a_later_shorter_close_does_not_shorten_the_gate() -> None:
    book = GateBook()
    book.close(ACME, NOW + 600, "quota cap: daily")
    rec = book.close(ACME, NOW + 30, "429: short")
    assert rec == GateRecord(ACME, NOW + 600, "quota cap: daily", 2)
    assert not book.is_open(ACME, NOW + 31)
    # A later, longer close extends it and takes over the reason.
    rec = book.close(ACME, NOW + 900, "quota cap: longer")
    assert rec == GateRecord(ACME, NOW + 900, "quota cap: longer", 3)
    assert book.open_at(ACME, NOW) == NOW + 900


def test_load_restores_persisted_closes() -> None:
    book = GateBook()
    book.load([GateRecord(ACME, NOW + 120, "429 rate limited", 4)])
    assert not book.is_open(ACME, NOW + 100)
    assert view(book, ACME, NOW) == (True, NOW + 120, "429 rate limited", 4, 0)


# ---- quotas ------------------------------------------------------------------------------------


def test_a_quota_of_two_closes_after_two_leases_start() -> None:
    book = GateBook({"sandbox": Quota(2, HOUR)})
    book.lease_started(ACME, "j1")
    assert book.is_open(ACME, NOW)
    book.lease_started(ACME, "j2")
    assert not book.is_open(ACME, NOW)
    # Nothing committed yet: it reopens only when a lease ends or commits and ages out.
    assert book.open_at(ACME, NOW) == float("inf")
    assert book.is_open(OTHER, NOW)  # the quota counts per (platform, account)


def test_a_lease_that_ends_without_committing_frees_its_reservation() -> None:
    book = GateBook({"sandbox": Quota(2, HOUR)})
    book.lease_started(ACME, "j1")
    book.lease_started(ACME, "j2")
    book.lease_ended(ACME, "j2")
    assert book.is_open(ACME, NOW)
    book.lease_ended(ACME, "j2")  # twice is harmless
    assert view(book, ACME, NOW)[4] == 1


def test_commits_keep_the_gate_closed_until_the_window_passes() -> None:
    book = GateBook({"sandbox": Quota(2, HOUR)})
    book.lease_started(ACME, "j1")
    book.lease_started(ACME, "j2")
    book.lease_committed(ACME, "j1", NOW)
    book.lease_committed(ACME, "j2", NOW + 10)
    book.lease_ended(ACME, "j1")  # the results arrive: commits still count in the window
    book.lease_ended(ACME, "j2")
    assert not book.is_open(ACME, NOW + 100)
    assert book.open_at(ACME, NOW + 100) == NOW + HOUR  # the oldest commit leaves the window
    assert not book.is_open(ACME, NOW + HOUR - 1)
    assert book.is_open(ACME, NOW + HOUR)
    assert view(book, ACME, NOW + HOUR) == (False, 0.0, "", 0, 1)
    assert view(book, ACME, NOW + HOUR + 10) == (False, 0.0, "", 0, 0)


def test_a_commit_plus_a_lease_in_flight_fill_the_quota() -> None:
    book = GateBook({"sandbox": Quota(2, HOUR)})
    book.lease_started(ACME, "j1")
    book.lease_committed(ACME, "j1", NOW)
    book.lease_started(ACME, "j2")
    assert not book.is_open(ACME, NOW + 1)
    assert book.open_at(ACME, NOW + 1) == NOW + HOUR


def test_an_account_quota_wins_over_the_platform_quota() -> None:
    book = GateBook({"sandbox": Quota(5, HOUR), "sandbox:acme": Quota(1, 60.0)})
    assert book.quota(ACME) == Quota(1, 60.0)
    assert book.quota(OTHER) == Quota(5, HOUR)
    assert book.quota(Target("x", "acme")) is None
    book.lease_started(ACME, "j1")
    book.lease_started(OTHER, "j2")
    assert not book.is_open(ACME, NOW)
    assert book.is_open(OTHER, NOW)


def test_without_a_quota_leases_are_not_counted() -> None:
    book = GateBook()
    for n in range(100):
        book.lease_started(ACME, f"j{n}")
    assert book.is_open(ACME, NOW)


def test_seeded_commits_count_after_a_restart() -> None:
    book = GateBook({"sandbox": Quota(2, HOUR)})
    book.seed_commits(ACME, [NOW - 100, NOW - 200])
    assert not book.is_open(ACME, NOW)
    assert book.open_at(ACME, NOW) == NOW - 200 + HOUR


def test_reopen_also_clears_the_quota_commits() -> None:
    book = GateBook({"sandbox": Quota(1, HOUR)})
    book.lease_started(ACME, "j1")
    book.lease_committed(ACME, "j1", NOW)
    book.lease_ended(ACME, "j1")
    assert not book.is_open(ACME, NOW + 1)
    book.reopen(ACME)
    assert book.is_open(ACME, NOW + 1)


def test_a_quota_and_a_rate_limit_close_until_the_later_of_both() -> None:
    book = GateBook({"sandbox": Quota(1, 60.0)})
    book.lease_started(ACME, "j1")
    book.lease_committed(ACME, "j1", NOW)
    book.lease_ended(ACME, "j1")
    book.close(ACME, NOW + 300, "429 rate limited")
    assert book.open_at(ACME, NOW) == NOW + 300
    assert book.is_open(ACME, NOW + 300)


# ---- views: what an operator reads -------------------------------------------------------------


def test_views_say_why_a_gate_is_closed() -> None:
    book = GateBook({"sandbox:other": Quota(2, HOUR)})
    book.close(ACME, NOW + 60, "429 rate limited: slow down")
    book.lease_started(OTHER, "j1")
    book.lease_started(OTHER, "j2")
    views = {v.target: v for v in book.views(NOW, extra=[Target("x", "acme")])}
    assert sorted(views) == [ACME, OTHER, Target("x", "acme")]

    acme = views[ACME]
    assert (acme.closed, acme.closed_until, acme.reason, acme.hits) == (
        True,
        NOW + 60,
        "429 rate limited: slow down",
        1,
    )
    assert (acme.quota_limit, acme.quota_window_s, acme.quota_used) == (0, 0.0, 0)

    other = views[OTHER]
    assert other.closed
    assert other.reason == "quota 2/3600s used up"
    assert (other.quota_limit, other.quota_window_s, other.quota_used) == (2, HOUR, 2)

    x = views[Target("x", "acme")]
    assert (x.closed, x.closed_until, x.reason) == (False, 0.0, "")


def test_a_passed_close_shows_no_reason() -> None:
    book = GateBook()
    book.close(ACME, NOW + 60, "429 rate limited")
    assert view(book, ACME, NOW + 61) == (False, 0.0, "", 1, 0)


# ---- parse_quota -------------------------------------------------------------------------------


def test_parse_quota() -> None:
    assert parse_quota("sandbox=2/3600") == ("sandbox", Quota(2, 3600.0))
    assert parse_quota("x:acme=50/86400") == ("x:acme", Quota(50, 86400.0))
    assert parse_quota("x=1/0.5") == ("x", Quota(1, 0.5))


@pytest.mark.parametrize(
    "spec",
    [
        "sandbox",
        "sandbox=",
        "sandbox=2",
        "sandbox=two/3600",
        "sandbox=2/an-hour",
        "sandbox=0/3600",
        "sandbox=-1/3600",
        "sandbox=2/0",
        "sandbox=2/-5",
        "=2/3600",
        "",
    ],
)
def test_parse_quota_refuses_a_malformed_spec(spec: str) -> None:
    with pytest.raises(ValueError, match=r"expected PLATFORM\[:ACCOUNT\]=N/SECONDS") as err:
        parse_quota(spec)
    assert repr(spec) in str(err.value)  # names what the operator typed
