"""What `Client` and `AsyncClient` share: their settings (the CLI's environment where not given),
the bearer metadata, the channel opened with TLS errors as PostroomError."""

from __future__ import annotations

from abc import ABC, abstractmethod

from postroom.client.errors import PostroomError, Translated
from postroom.client.settings import (
    DEFAULT_TIMEOUT_S,
    coordinator_address,
    default_actor,
    operator_token,
)
from postroom.tls import ClientTls, TlsError


class ClientBase(ABC):
    def __init__(
        self,
        address: str | None = None,
        *,
        token: str | None = None,
        tls: ClientTls | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        actor: str | None = None,
    ) -> None:
        self.target = address or coordinator_address()
        self.timeout_s = timeout_s
        self.actor = actor or default_actor()
        self.tls = tls if tls is not None else ClientTls.from_env()
        self.token = operator_token() if token is None else token
        try:
            self._connect()
        except TlsError as exc:
            raise PostroomError("TLS", str(exc)) from exc
        self._metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

    @abstractmethod
    def _connect(self) -> None:
        """Open the channel to `self.target` with `self.tls`, and its stub."""

    def _translated(self, timeout_s: float | None) -> Translated:
        """Around a call: its failure raised as a PostroomError naming this coordinator."""
        return Translated(self.target, timeout_s)
