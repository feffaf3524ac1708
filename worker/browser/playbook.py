"""Playbooks: how a browser worker publishes on one site, as data (one versioned TOML file).

A changed selector is an edit of the file, never of code. The file is read and checked once, when
the worker starts: every key is known, every template names only the placeholders its place
offers, every regex compiles; a mistake is a `PlaybookError` naming the file and the key.

    playbook = "example"            # its name (bundled: worker/browser/playbooks/<name>.toml)
    version = 1                     # bumped on every edit; shown in step logs
    platform = "x"                  # the platform it serves
    description = "X-like composer"
    step_timeout_ms = 10000         # the bound of a step that names none

    [login]
    check_url = "{base_url}/home"   # opened by the login check
    login_url = "{base_url}/login"  # opened by `postroom browser-login`
    logged_in = { selector = "[data-testid=account-menu]", cookie = "session" }  # all must hold
    login_wall = { url_contains = ["/login"], selector = "form#login" }          # any one
    challenge = { url_contains = ["/2fa"], text = "Enter the code" }             # any one

    [[compose]]                     # in order; each is one step log line with its duration
    name = "open_composer"
    action = "goto"
    url = "{base_url}/compose"
    [[compose]]
    name = "type_text"
    action = "fill"
    selector = "[data-testid=composer]"
    value = "{text}"
    [[compose]]
    name = "attach_media"
    action = "upload"               # the job's media files, into an <input type=file>
    selector = "input[type=file]"
    when = "media"

    [commit]                        # the one irreversible step: a click or a key press
    name = "submit"
    action = "click"
    selector = "[data-testid=post-button]"
    timeout_ms = 2500               # clamped below the worker's lease margin
    response = { url = "/api/posts$", method = "POST" }   # the submit request (regex on URL)
    success = { selector = "[data-testid=toast]" }        # seen after an accepted response

    [[commit.outcome]]              # first match wins; none given: the defaults below
    status = ["2xx"]
    result = "accepted"
    [[commit.outcome]]
    status = ["429"]
    result = "rejected"
    error_class = "RATE_LIMITED"
    message_json = "error.message"
    retry_after_header = "retry-after"

    [permalink]
    id_json = "data.id"             # from the submit response's JSON
    url_template = "{base_url}/{account}/status/{post_id}"

    [verify]                        # the profile page, for verify_first
    url = "{base_url}/{account}"
    ready_selector = "[data-testid=timeline]"
    item_selector = "[data-testid=post]"
    text_selector = "[data-testid=post-text]"
    link_selector = "a.permalink"
    id_from_url = "/status/([0-9]+)"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, cast

from worker.browser.reading import PlaybookError as PlaybookError
from worker.browser.reading import Reader

ACTIONS = ("goto", "fill", "type", "click", "press", "upload", "wait_for", "select")
COMMIT_ACTIONS = ("click", "press")
RESULTS = ("accepted", "rejected", "duplicate", "unknown")
ERROR_CLASSES = ("RATE_LIMITED", "AUTH_REQUIRED", "INVALID_CONTENT", "TRANSIENT")
WHEN = ("always", "media", "no_media")
DEFAULT_STEP_TIMEOUT_MS = 10_000
DEFAULT_COMMIT_TIMEOUT_MS = 5_000
DEFAULT_VERIFY_ITEMS = 50

# Placeholders each kind of template may use.
PAGE_FIELDS = frozenset({"base_url", "account"})
STEP_FIELDS = frozenset({"base_url", "account", "text"})
LINK_FIELDS = frozenset({"base_url", "account", "post_id"})

Action = Literal["goto", "fill", "type", "click", "press", "upload", "wait_for", "select"]
Result = Literal["accepted", "rejected", "duplicate", "unknown"]
When = Literal["always", "media", "no_media"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """Signals on a page. `logged_in` needs all it names; a wall or challenge any one."""

    url_contains: tuple[str, ...] = ()
    selector: str | None = None
    text: str | None = None
    cookie: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.url_contains or self.selector or self.text or self.cookie)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginSpec:
    check_url: str
    login_url: str
    logged_in: Probe
    login_wall: Probe = Probe()
    challenge: Probe = Probe()


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    name: str
    action: Action
    selector: str | None = None
    value: str | None = None
    url: str | None = None
    key: str | None = None
    when: When = "always"
    timeout_ms: int = DEFAULT_STEP_TIMEOUT_MS

    def applies(self, has_media: bool) -> bool:
        return self.when == "always" or (self.when == "media") == has_media


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseMatch:
    url: re.Pattern[str]
    method: str = "POST"

    def matches(self, url: str, method: str) -> bool:
        return method.upper() == self.method and self.url.search(url) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeRule:
    status: tuple[str, ...]  # "201", "2xx"
    result: Result
    body_contains: str | None = None
    json_has: str | None = None
    error_class: str = "TRANSIENT"
    message_json: str | None = None
    message_selector: str | None = None
    message: str | None = None
    retry_after_header: str | None = None

    def matches_status(self, status: int) -> bool:
        code = str(status)
        return any(
            code == s or (s.endswith("xx") and code[:1] == s[:1] and len(code) == 3)
            for s in self.status
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitSpec:
    step: Step
    response: ResponseMatch
    outcomes: tuple[OutcomeRule, ...]
    success: Probe = Probe()


@dataclass(frozen=True, slots=True, kw_only=True)
class PermalinkSpec:
    id_json: str | None = None
    url_json: str | None = None
    url_selector: str | None = None
    url_attribute: str = "href"
    url_template: str | None = None
    id_from_url: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifySpec:
    url: str
    item_selector: str
    ready_selector: str | None = None
    text_selector: str | None = None
    link_selector: str | None = None
    link_attribute: str = "href"
    id_from_url: re.Pattern[str] | None = None
    max_items: int = DEFAULT_VERIFY_ITEMS


@dataclass(frozen=True, slots=True, kw_only=True)
class Playbook:
    name: str
    version: int
    platform: str
    description: str
    step_timeout_ms: int
    login: LoginSpec
    compose: tuple[Step, ...]
    commit: CommitSpec
    permalink: PermalinkSpec
    verify: VerifySpec | None
    source: str  # the file it was read from

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


DEFAULT_OUTCOMES: tuple[OutcomeRule, ...] = (
    OutcomeRule(status=("2xx",), result="accepted"),
    OutcomeRule(status=("429",), result="rejected", error_class="RATE_LIMITED"),
    OutcomeRule(status=("401", "403"), result="rejected", error_class="AUTH_REQUIRED"),
    OutcomeRule(status=("409",), result="duplicate"),
    OutcomeRule(status=("400", "413", "422"), result="rejected", error_class="INVALID_CONTENT"),
    # A 5xx may come after the post was stored: in doubt, the next attempt looks first.
    OutcomeRule(status=("5xx",), result="unknown"),
)


def bundled_names() -> list[str]:
    folder = resources.files("worker.browser") / "playbooks"
    if not folder.is_dir():
        return []
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_playbook(ref: str, *, relative_to: Path | None = None) -> Playbook:
    """A bundled playbook by name ("sandbox-x"), or a .toml file (relative paths against
    `relative_to`, the accounts file's folder)."""
    if ref.endswith(".toml") or "/" in ref:
        path = Path(ref).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PlaybookError(f"cannot read playbook {path}: {exc.strerror}") from None
        return parse_playbook(text, source=str(path))
    resource = resources.files("worker.browser") / "playbooks" / f"{ref}.toml"
    if not resource.is_file():
        known = ", ".join(bundled_names()) or "none"
        raise PlaybookError(
            f"no bundled playbook {ref!r} (bundled: {known}); or give a path to a .toml file"
        )
    return parse_playbook(resource.read_text(encoding="utf-8"), source=f"bundled:{ref}")


def parse_playbook(text: str, *, source: str) -> Playbook:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlaybookError(f"playbook {source} is not valid TOML: {exc}") from None
    r = Reader(data, f"playbook {source}")
    r.known(
        {"playbook", "version", "platform", "description", "step_timeout_ms"}
        | {"login", "compose", "commit", "permalink", "verify"}
    )
    step_timeout = r.positive_int("step_timeout_ms", DEFAULT_STEP_TIMEOUT_MS)
    version = r.positive_int("version", None)
    compose_tables = r.table_list("compose")
    if not compose_tables:
        raise PlaybookError(f"playbook {source}: [[compose]] needs at least one step")
    compose = tuple(
        _step(t, f"playbook {source}: [[compose]] #{i}", step_timeout, ACTIONS)
        for i, t in enumerate(compose_tables, start=1)
    )
    names = [s.name for s in compose]
    if len(set(names)) != len(names):
        raise PlaybookError(f"playbook {source}: [[compose]] step names must be unique: {names}")
    verify = r.table("verify")
    return Playbook(
        name=r.string("playbook"),
        version=version,
        platform=r.string("platform").lower(),
        description=r.optional_string("description") or "",
        step_timeout_ms=step_timeout,
        login=_login(r.sub("login", required=True)),
        compose=compose,
        commit=_commit(r.sub("commit", required=True), step_timeout),
        permalink=_permalink(r.sub("permalink", required=True)),
        verify=_verify(r.sub("verify", required=True)) if verify is not None else None,
        source=source,
    )


# ---- sections ---------------------------------------------------------------------------


def _login(r: Reader) -> LoginSpec:
    r.known({"check_url", "login_url", "logged_in", "login_wall", "challenge"})
    logged_in = _probe(r.sub("logged_in", required=True), {"selector", "cookie", "url_contains"})
    if logged_in.empty:
        raise PlaybookError(f"{r.where}.logged_in: give a selector and/or a cookie name")
    return LoginSpec(
        check_url=r.template("check_url", PAGE_FIELDS),
        login_url=r.template("login_url", PAGE_FIELDS),
        logged_in=logged_in,
        login_wall=_probe(r.sub("login_wall"), {"url_contains", "selector", "text"}),
        challenge=_probe(r.sub("challenge"), {"url_contains", "selector", "text"}),
    )


def _probe(r: Reader, keys: set[str]) -> Probe:
    r.known(keys)
    return Probe(
        url_contains=r.strings("url_contains"),
        selector=r.optional_string("selector"),
        text=r.optional_string("text"),
        cookie=r.optional_string("cookie"),
    )


def _step(
    table: Mapping[str, object], where: str, default_ms: int, actions: tuple[str, ...]
) -> Step:
    r = Reader(table, where)
    r.known({"name", "action", "selector", "value", "url", "key", "when", "timeout_ms"})
    name = r.string("name")
    r.where = f"{where} (name {name!r})"
    action = r.choice("action", actions)
    step = Step(
        name=name,
        action=cast(Action, action),
        selector=r.optional_string("selector"),
        value=r.optional_template("value", STEP_FIELDS),
        url=r.optional_template("url", PAGE_FIELDS),
        key=r.optional_string("key"),
        when=cast(When, r.choice("when", WHEN, "always")),
        timeout_ms=r.positive_int("timeout_ms", default_ms),
    )
    needs = {
        "goto": ("url",),
        "fill": ("selector", "value"),
        "type": ("selector", "value"),
        "select": ("selector", "value"),
        "click": ("selector",),
        "upload": ("selector",),
        "wait_for": ("selector",),
        "press": ("key",),
    }[action]
    for key in needs:
        if getattr(step, key) is None:
            raise PlaybookError(f"{r.where}: action {action!r} needs {key!r}")
    return step


def _commit(r: Reader, step_timeout_ms: int) -> CommitSpec:
    step_keys = {"name", "action", "selector", "key", "timeout_ms"}
    r.known(step_keys | {"response", "outcome", "success"})
    fields = {k: v for k, v in r.data.items() if k in step_keys}
    fields.setdefault("timeout_ms", min(step_timeout_ms, DEFAULT_COMMIT_TIMEOUT_MS))
    step = _step(fields, r.where, step_timeout_ms, COMMIT_ACTIONS)
    response = r.sub("response", required=True)
    response.known({"url", "method"})
    rules = tuple(
        _outcome(Reader(t, f"{r.where}: [[commit.outcome]] #{i}"))
        for i, t in enumerate(r.table_list("outcome"), start=1)
    )
    return CommitSpec(
        step=step,
        response=ResponseMatch(
            url=response.regex("url", required=True) or re.compile(""),
            method=(response.optional_string("method") or "POST").upper(),
        ),
        outcomes=rules or DEFAULT_OUTCOMES,
        success=_probe(r.sub("success"), {"selector", "text", "url_contains"}),
    )


def _outcome(r: Reader) -> OutcomeRule:
    r.known(
        {"status", "result", "body_contains", "json_has", "error_class", "message_json"}
        | {"message_selector", "message", "retry_after_header"}
    )
    status = r.strings("status")
    for s in status:
        if not re.fullmatch(r"[1-5]([0-9]{2}|xx)", s):
            raise PlaybookError(f'{r.where}.status: {s!r} is not a status like "201" or "4xx"')
    if not status:
        raise PlaybookError(f'{r.where}: status is required, e.g. status = ["2xx"]')
    result = r.choice("result", RESULTS)
    error_class = r.choice("error_class", ERROR_CLASSES, "TRANSIENT")
    if result == "rejected" and "error_class" not in r.data:
        raise PlaybookError(f"{r.where}: a rejected outcome needs error_class {ERROR_CLASSES}")
    return OutcomeRule(
        status=status,
        result=cast(Result, result),
        body_contains=r.optional_string("body_contains"),
        json_has=r.optional_string("json_has"),
        error_class=error_class,
        message_json=r.optional_string("message_json"),
        message_selector=r.optional_string("message_selector"),
        message=r.optional_string("message"),
        retry_after_header=r.optional_string("retry_after_header"),
    )


def _permalink(r: Reader) -> PermalinkSpec:
    r.known({"id_json", "url_json", "url_selector", "url_attribute", "url_template", "id_from_url"})
    spec = PermalinkSpec(
        id_json=r.optional_string("id_json"),
        url_json=r.optional_string("url_json"),
        url_selector=r.optional_string("url_selector"),
        url_attribute=r.optional_string("url_attribute") or "href",
        url_template=r.optional_template("url_template", LINK_FIELDS),
        id_from_url=r.regex("id_from_url"),
    )
    if not (spec.id_json or spec.url_json or spec.url_selector):
        raise PlaybookError(
            f"{r.where}: say where the post's id or URL comes from "
            "(id_json, url_json or url_selector)"
        )
    return spec


def _verify(r: Reader) -> VerifySpec:
    r.known(
        {"url", "ready_selector", "item_selector", "text_selector", "link_selector"}
        | {"link_attribute", "id_from_url", "max_items"}
    )
    return VerifySpec(
        url=r.template("url", PAGE_FIELDS),
        item_selector=r.string("item_selector"),
        ready_selector=r.optional_string("ready_selector"),
        text_selector=r.optional_string("text_selector"),
        link_selector=r.optional_string("link_selector"),
        link_attribute=r.optional_string("link_attribute") or "href",
        id_from_url=r.regex("id_from_url"),
        max_items=r.positive_int("max_items", DEFAULT_VERIFY_ITEMS),
    )


def fill_template(text: str, values: Mapping[str, str]) -> str:
    """Placeholders were checked at load time; the values are never themselves parsed."""
    return text.format_map(dict(values))


def json_path(data: object, path: str) -> object:
    """`a.b.0.c` in parsed JSON, or None when any part is missing."""
    current = data
    for part in path.split("."):
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return None
    return current
