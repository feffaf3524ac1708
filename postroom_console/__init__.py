"""postroom's web console for operators: a separate process, an asynchronous client of the
coordinator's `Publishing` API, rendering HTML on the server (Starlette and Jinja2) with htmx for
partial updates and Server-Sent Events for live ones.

    postroom console --coordinator 127.0.0.1:50051 --listen 127.0.0.1:8080

Modules: app (routes, sign-in, lifecycle), auth (sessions, CSRF), pages (what is read), actions
(what is done, asked about first when it cannot be undone), live (SSE, screenshots, audit
export), calendar, render (templates and their filters), web (what they share).
"""

from postroom_console.app import ConsoleConfig, create_app

__all__ = ["ConsoleConfig", "create_app"]
