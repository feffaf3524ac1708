"""The Markdown-vault workflow: drafts as files, approve by moving, retry or cancel by editing.

`postroom vault draft` writes a draft into `Pending_Approval/`; `postroom vault watch` bridges
the vault to a coordinator: a file a person moves into `Approved/` becomes an approved, scheduled
post, and the bridge writes its progress back into the file (frontmatter and body), appends audit
lines to `Logs/`, and moves the file to `Done/` once every platform succeeded.

Errors (one root):

    VaultError
    ├── MalformedFile      a file that cannot be parsed (a note is written beside it)
    └── OutsideVault       a path (file or media) that resolves outside the vault
"""

from __future__ import annotations


class VaultError(Exception):
    """Root of every error this package raises."""


class MalformedFile(VaultError):
    """The file is not a vault post: its message says what to fix."""


class OutsideVault(VaultError):
    """A path resolves outside the vault (a symlink, `..`, an absolute media path)."""
