"""Local stand-ins for social platforms: an HTTP server with fault injection that records every
post it accepts, so a system bug that posts twice is visible.

Modules: `faults` (pure fault model), `app` (Starlette app and in-memory state), `server`
(uvicorn runner, `python -m sandbox`), `admin` (sync client for tests, the demo and the chaos
checker).

Exceptions::

    SandboxError
    ├── faults.FaultSpecError   a fault request that cannot be understood
    └── admin.AdminError        an admin call failed (transport error or non-2xx answer)

This module imports nothing so that `sandbox.admin` stays cheap to import.
"""

# The admin API's bearer token, for `postroom sandbox` and SandboxAdmin (admin_auth.py).
ENV_ADMIN_TOKEN = "POSTROOM_SANDBOX_ADMIN_TOKEN"


class SandboxError(Exception):
    """Root of every error raised by the sandbox package."""
