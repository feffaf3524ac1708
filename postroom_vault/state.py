"""The bridge's memory per file id, in `VAULT/.postroom/posts/<id>.json` (atomic writes).

This is what makes the bridge idempotent: the post id is stored before the post is approved
and scheduled, so moving a file twice or restarting the bridge finds it and creates nothing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from postroom_vault import VaultError
from postroom_vault.document import write_atomic
from postroom_vault.progress import Tracking


class StateStore:
    def __init__(self, vault: Path) -> None:
        self.root = vault / ".postroom" / "posts"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, file_id: str) -> Path:
        return self.root / f"{file_id}.json"

    def load(self, file_id: str) -> Tracking | None:
        path = self._path(file_id)
        try:
            return Tracking(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise VaultError(
                f"the bridge's record {path} is damaged ({exc}); look up the post with "
                "`postroom post list`, then delete the record to start this file over"
            ) from None

    def save(self, track: Tracking) -> None:
        data = json.dumps(asdict(track), sort_keys=True).encode("utf-8")
        write_atomic(self._path(track.file_id), data)
