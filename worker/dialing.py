"""Which coordinator the worker dials next, and how long it waits first: a pure value.

Round-robin over the `--coordinator` addresses, starting at a random one (so a fleet given the
same list spreads out). A failed dial, or a stream that broke, moves on to the next address at
once; only when every address has failed in a row does the worker wait, with the backoff of
`BackoffPolicy` counted in such rounds. A session that reached its Welcome starts the backoff
over. With one address this is the plain backoff: every failure waits.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.config import BackoffPolicy


@dataclass(slots=True)
class Rotation:
    targets: tuple[str, ...]
    policy: BackoffPolicy
    index: int = 0
    # Failures in a row since the last Welcome or the last wait.
    failed_in_round: int = 0
    # Rounds in a row in which every address failed: the backoff's attempt number.
    rounds: int = 0

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("at least one coordinator address is needed")
        self.index %= len(self.targets)

    @classmethod
    def starting_at(cls, targets: tuple[str, ...], policy: BackoffPolicy, pick: float) -> Rotation:
        """Start at the address `pick` (uniform in [0, 1)) falls on."""
        return cls(targets, policy, index=int(pick * len(targets)))

    @property
    def current(self) -> str:
        return self.targets[self.index]

    def welcomed(self) -> None:
        """The current address answered with a Welcome: stay, and start the backoff over."""
        self.failed_in_round = 0
        self.rounds = 0

    def failed(self, jitter: float) -> float:
        """The current address failed (or its stream broke): move on; the seconds to wait
        before dialling the next one. `jitter` is uniform in [0, 1)."""
        self.index = (self.index + 1) % len(self.targets)
        self.failed_in_round += 1
        if self.failed_in_round < len(self.targets):
            return 0.0
        delay = self.policy.delay_s(self.rounds, jitter)
        self.failed_in_round = 0
        self.rounds += 1
        return delay
