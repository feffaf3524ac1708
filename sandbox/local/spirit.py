"""django-spirit (PyPI; a real server-rendered forum) as a process on 127.0.0.1.

    template = spirit_template()                          # the migrated project, made once
    with SpiritForum(workdir, {"alice": "pw"}, template=template) as forum:
        forum.url                                          # the site (base_url)
        forum.session_cookie("alice")                      # a logged-in `sessionid` value
        forum.topics("alice")                              # what the user has published
        forum.hold_answer(r"^/topic/publish/", 30, user="alice")  # her next topic: no answer

`spirit startproject` + `migrate` take a few seconds, so `spirit_template` makes one migrated
project per cache directory (by default in the temp folder, per Spirit and Django version) and
each forum copies it. `start` adds a settings module beside Spirit's dev settings (its rate
limiter on, this port's site URL, the hold middleware below), creates the users (verified, with
passwords; topics go to the "Uncategorized" category every Spirit install has), then runs
Django's own `runserver`. The port is picked free by the OS just before the start; readiness is
polled, and the process is stopped by its PID.

Spirit's limiter counts in fixed windows (1 topic per 10 s per user, 5 logins per 5 min per
IP and username). With `ratelimit_never_expires` (Spirit's own ST_TESTS_RATELIMIT_NEVER_EXPIRE)
the window never rolls over: a user's second topic is always refused, whatever the clock says,
so a test can hit the limiter without racing a window boundary.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from sandbox.local import LocalProcess, LocalServerError, free_port, wait_for

READY_TIMEOUT_S = 30.0
MANAGE_TIMEOUT_S = 120.0
PROJECT = "mysite"
SETTINGS = f"{PROJECT}.settings.postroom"

# Holds the answer to a matching request after the view ran (the write is done, the answer is
# late): the fault a lost answer makes. Read from hold.json on every request; `count` is spent.
_HOLD_MIDDLEWARE = """\
import json, re, time
from pathlib import Path

HOLD = Path(__file__).resolve().parent / "hold.json"


class HoldAnswer:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        try:
            rule = json.loads(HOLD.read_text())
        except (OSError, ValueError):
            return response
        user = getattr(request, "user", None)
        if (
            rule.get("count", 0) > 0
            and request.method == rule["method"]
            and re.search(rule["path"], request.path)
            and rule.get("user") in (None, getattr(user, "username", None))
        ):
            rule["count"] -= 1
            HOLD.write_text(json.dumps(rule))
            time.sleep(rule["seconds"])
        return response
"""

_SETTINGS = """\
from .dev import *  # noqa: F403

ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ST_SITE_URL = {site_url!r}
ST_RATELIMIT_ENABLE = True
ST_TESTS_RATELIMIT_NEVER_EXPIRE = {never_expires!r}
MIDDLEWARE = ["postroom_hold.HoldAnswer", *MIDDLEWARE]  # noqa: F405
"""

# Run by `manage.py shell`: the users, and a logged-in session for each.
_SEED = """\
import json, os
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import get_user_model

spec = json.loads(os.environ["POSTROOM_SPIRIT_SEED"])
User = get_user_model()
store = import_module(settings.SESSION_ENGINE).SessionStore
out = {"users": {}, "sessions": {}}
for name, password in spec["users"].items():
    user = User.objects.create_user(name, f"{name}@example.com", password)
    user.st.is_verified = True
    user.st.save()
    session = store()
    session[SESSION_KEY] = user._meta.pk.value_to_string(user)
    session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    out["users"][name] = user.pk
    out["sessions"][name] = session.session_key
print("SEED " + json.dumps(out))
"""


@dataclass(frozen=True)
class Topic:
    id: int
    title: str
    comment: str  # the first comment: the topic's body as typed (Markdown; line breaks \n)
    comment_id: int  # its permalink is /comment/<comment_id>/find/
    url: str

    def permalink(self, site: str) -> str:
        return f"{site}/comment/{self.comment_id}/find/"


def spirit_missing() -> str | None:
    """Why django-spirit cannot run here (None: it can)."""
    if importlib.util.find_spec("spirit") is None:
        return "django-spirit is not installed (pip install django-spirit; make install has it)"
    return None


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # `spirit startproject` shells out to django-admin: the venv's bin/ goes first on PATH.
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return {**env, **(extra or {})}


def _run(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=MANAGE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise LocalServerError(
            f"{' '.join(argv[1:4])} exited {done.returncode}:\n{done.stderr[-2000:]}"
        )
    return done.stdout


def default_cache_dir() -> Path:
    """Where `spirit_template` keeps its project between runs: the system's temp folder, one
    per Spirit and Django version (a new version gets a new, freshly migrated project)."""
    versions = (
        f"{importlib.metadata.version('django-spirit')}-{importlib.metadata.version('django')}"
    )
    return Path(tempfile.gettempdir()) / f"postroom-spirit-{versions}-{os.getuid()}"


def spirit_template(cache_dir: Path | None = None) -> Path:
    """A migrated Spirit project under `cache_dir` (default: `default_cache_dir()`), made on
    the first call (a few seconds) and reused after."""
    cache_dir = cache_dir or default_cache_dir()
    missing = spirit_missing()
    if missing is not None:
        raise LocalServerError(missing)
    ready = cache_dir / "spirit-template"
    if (ready / "manage.py").is_file():
        return ready
    building = cache_dir / f"spirit-building-{uuid.uuid4().hex}"
    building.mkdir(parents=True)
    try:
        spirit = [sys.executable, "-m", "spirit.extra.bin.spirit"]
        _run([*spirit, "startproject", PROJECT], building)
        project = building / PROJECT
        _run([sys.executable, "manage.py", "migrate", "--noinput"], project)
        with contextlib.suppress(OSError):  # atomic: a concurrent builder's copy wins
            project.rename(ready)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return ready


class SpiritForum(LocalProcess):
    name = "django-spirit"

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str],
        *,
        template: Path | None = None,
        ratelimit_never_expires: bool = True,
    ) -> None:
        super().__init__(workdir / "spirit.out")  # not *.log: the rig greps those
        self.workdir = workdir
        self.users = dict(users)
        self.template = template
        self.never_expires = ratelimit_never_expires
        self.project = workdir / PROJECT
        self.port = 0
        self.url = ""
        self.user_ids: dict[str, int] = {}
        self._sessions: dict[str, str] = {}

    # ---- process -------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        template = self.template or spirit_template(self.workdir)
        shutil.copytree(template, self.project)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        settings = _SETTINGS.format(site_url=self.url + "/", never_expires=self.never_expires)
        (self.project / PROJECT / "settings" / "postroom.py").write_text(settings)
        (self.project / "postroom_hold.py").write_text(_HOLD_MIDDLEWARE)
        self._seed()
        argv = [
            sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}",
            "--noreload", f"--settings={SETTINGS}",
        ]  # fmt: skip
        self.spawn(argv, cwd=self.project, env=_env())
        wait_for("django-spirit to answer", self._ready, READY_TIMEOUT_S)

    def _seed(self) -> None:
        spec = json.dumps({"users": self.users})
        out = _run(
            [sys.executable, "manage.py", "shell", f"--settings={SETTINGS}", "-c", _SEED],
            self.project,
            {"POSTROOM_SPIRIT_SEED": spec},
        )
        line = next((x for x in out.splitlines() if x.startswith("SEED ")), None)
        if line is None:
            raise LocalServerError(f"seeding django-spirit printed no result:\n{out[-2000:]}")
        seeded = json.loads(line.removeprefix("SEED "))
        self.user_ids = {name: int(pk) for name, pk in seeded["users"].items()}
        self._sessions = seeded["sessions"]

    def _ready(self) -> bool:
        self.check_running()
        try:
            return self._http.get(self.url + "/").status_code == 200
        except httpx.TransportError:
            return False

    # ---- the forum, as a test looks at it ------------------------------------------------

    def session_cookie(self, username: str) -> str:
        """The `sessionid` of a session logged in as `username` (made at start, no login)."""
        return self._sessions[username]

    def topics(self, username: str) -> list[Topic]:
        """The user's topics, newest first, read from the forum's own database."""
        query = """
            SELECT t.id, t.title, t.slug, c.id, c.comment
            FROM spirit_topic_topic t
            JOIN auth_user u ON u.id = t.user_id
            LEFT JOIN spirit_comment_comment c ON c.id = (
                SELECT MIN(first.id) FROM spirit_comment_comment first
                WHERE first.topic_id = t.id)
            WHERE u.username = ? ORDER BY t.id DESC
        """
        with contextlib.closing(sqlite3.connect(self.project / "db.sqlite3", timeout=10.0)) as db:
            rows = db.execute(query, (username,)).fetchall()
        return [
            Topic(
                id=int(pk),
                title=title,
                comment=(comment or "").replace("\r\n", "\n"),
                comment_id=int(comment_id or 0),
                url=f"{self.url}/topic/{pk}/{slug}/",
            )
            for pk, title, slug, comment_id, comment in rows
        ]

    def hold_answer(
        self,
        path: str,
        seconds: float,
        *,
        method: str = "POST",
        count: int = 1,
        user: str | None = None,
    ) -> None:
        """The next `count` `method` requests whose path matches the regex `path` (made by
        `user`, if given) are served, then answered only after `seconds` (the forum has
        written; the answer is late)."""
        rule = {"path": path, "method": method, "seconds": seconds, "count": count, "user": user}
        (self.project / "hold.json").write_text(json.dumps(rule))
