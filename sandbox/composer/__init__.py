"""Composer web sites for browser workers: an X-like one at `/web/x` and an Instagram-like one at
`/web/instagram`, served by `postroom sandbox` beside its APIs (a browser account's base_url is
e.g. `http://127.0.0.1:8787/web/x`).

Each is a small site shaped like the real one where a playbook touches it: a login page and a
session cookie (any username, any non-empty password), a login wall (redirect to the login page),
a composer whose submit is a `fetch` POST to a JSON endpoint answering the created post's id or
the platform's error shape, a success toast, a profile page listing the account's posts with
permalinks. Every accepted post is recorded in the sandbox's one record (`/admin/posts`,
`/admin/duplicates`) under platform `x` or `instagram`.

Faults go through the sandbox's admin API (`POST /admin/faults`, per platform and account, with
counts): the API kinds on op `create` hit the submit (`rate_limit` 429 with Retry-After, `auth`
401 and logs the account out, `invalid` 400, `server_error` 5xx, `hang`, `accept_then_hang` (the
post is recorded, the answer never comes), `accept_then_fail`); the page kinds on op `page` hit
page loads (`renamed_selector`, `slow_page` by `hang_seconds`, `challenge`); and
`POST /admin/accounts/{platform}/{account}/logout` ends every session of the account.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Mount

if TYPE_CHECKING:
    from sandbox.app import SandboxState


def composer_mounts(state: SandboxState) -> list[Mount]:
    # Imported here: the sites use sandbox.app, which mounts them.
    from sandbox.composer.instagram_site import instagram_app
    from sandbox.composer.x_site import x_app

    return [Mount("/web/x", app=x_app(state)), Mount("/web/instagram", app=instagram_app(state))]
