"""The worker's accounts file, credential references, redaction, media loading and the account
host: what a user configuring a real account runs into."""

from __future__ import annotations

import io
import logging
import socket
import stat
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from postroom.clock import SystemClock
from worker.accounts import AccountConfig, AccountsError, load_accounts
from worker.adapters.base import JobSpec, Prepared, Published
from worker.adapters.png import render_card
from worker.errors import AdapterError, InvalidContent, Transient
from worker.main import main as worker_main
from worker.media import MediaLoader, sniff_content_type
from worker.platforms.base import (
    AccountHost,
    PlatformClient,
    PlatformContext,
    Transcript,
    UnknownAccount,
)
from worker.redact import REDACTED, RedactingFilter, Redactor

pytestmark = pytest.mark.anyio

SECRET = "s3cret-value-that-must-not-show"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_env_and_file_references_resolve_and_never_print(tmp_path: Path) -> None:
    token_file = write(tmp_path / "token", "from-a-file-123\n")
    accounts_file = write(
        tmp_path / "accounts.toml",
        f"""
[[account]]
platform = "Mastodon"
account = "acme"
base_url = "https://mastodon.example/"
max_characters = 1000
[account.credentials]
access_token = "env:ACME_TOKEN"
other = "file:{token_file}"
""",
    )
    redactor = Redactor()
    (account,) = load_accounts(accounts_file, redactor=redactor, environ={"ACME_TOKEN": SECRET})
    assert account.label == "mastodon:acme"  # platform names are case-insensitive
    assert account.base_url == "https://mastodon.example"
    assert account.secret("access_token").reveal() == SECRET
    assert account.secret("other").reveal() == "from-a-file-123"  # trailing newline stripped
    assert account.int_option("max_characters") == 1000
    shown = f"{account!r} {account.credentials} {account.secret('access_token')}"
    assert SECRET not in shown and "from-a-file-123" not in shown
    assert "env:ACME_TOKEN" in shown  # where it came from is safe to show
    assert redactor(f"Bearer {SECRET}") == f"Bearer {REDACTED}"


@pytest.mark.parametrize(
    ("credential", "environ", "expected"),
    [
        (f'"{SECRET}"', {}, "written inline; write env:NAME or file:PATH"),
        ('"env:MISSING_VAR"', {}, "environment variable MISSING_VAR is unset"),
        ('"file:/nonexistent/token"', {}, "cannot read /nonexistent/token"),
        ("42", {}, "must be a string like env:NAME"),
    ],
)
def test_bad_credential_references_say_what_to_write(
    tmp_path: Path, credential: str, environ: dict[str, str], expected: str
) -> None:
    accounts_file = write(
        tmp_path / "a.toml",
        f"""
[[account]]
platform = "x"
account = "acme"
base_url = "https://api.x.com"
credentials = {{ access_token = {credential} }}
""",
    )
    with pytest.raises(AccountsError, match=expected) as info:
        load_accounts(accounts_file, redactor=Redactor(), environ=environ)
    assert SECRET not in str(info.value)
    assert "x:acme" in str(info.value)


def test_inline_credentials_only_when_allowed(tmp_path: Path) -> None:
    accounts_file = write(
        tmp_path / "a.toml",
        f"""
[[account]]
platform = "x"
account = "acme"
base_url = "http://127.0.0.1:1"
credentials = {{ access_token = "{SECRET}" }}
""",
    )
    (account,) = load_accounts(accounts_file, redactor=Redactor(), allow_inline=True)
    assert account.secret("access_token").reveal() == SECRET
    assert account.secret("access_token").source == "inline"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", "no \\[\\[account\\]\\] tables"),
        ("[[account]]\nplatform = 'x'\n", "'account' is required"),
        (
            "[[account]]\nplatform='x'\naccount='a'\nbase_url='ftp://x'\n",
            "must start with https://",
        ),
        (
            "[[account]]\nplatform='x'\naccount='a'\nbase_url='https://a'\n" * 2,
            "listed twice",
        ),
        ("not toml = = =", "is not valid TOML"),
    ],
)
def test_malformed_accounts_files(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(AccountsError, match=expected):
        load_accounts(write(tmp_path / "a.toml", body), redactor=Redactor())


def test_rotated_token_is_written_back_to_its_file(tmp_path: Path) -> None:
    token_file = write(tmp_path / "refresh", "old-refresh-token\n")
    accounts_file = write(
        tmp_path / "a.toml",
        f"""
[[account]]
platform = "x"
account = "acme"
base_url = "https://api.x.com"
credentials = {{ refresh_token = "file:{token_file}", access_token = "env:T" }}
""",
    )
    redactor = Redactor()
    (account,) = load_accounts(accounts_file, redactor=redactor, environ={"T": "access-1234"})
    assert account.secret("refresh_token").rotate("new-refresh-token") is True
    assert token_file.read_text() == "new-refresh-token\n"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert account.secret("access_token").rotate("access-5678") is False  # env: cannot persist
    assert redactor("new-refresh-token access-5678") == f"{REDACTED} {REDACTED}"


def test_log_records_are_scrubbed() -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(redactor))
    log = logging.getLogger("test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("platform said %s", {"token": SECRET})
        try:
            raise ValueError(f"header Authorization: Bearer {SECRET}")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert SECRET not in text
    assert text.count(REDACTED) == 2


# ---- media ----------------------------------------------------------------------------------


async def test_media_from_the_media_dir_and_urls(tmp_path: Path) -> None:
    png = render_card("t", ["x"])
    (tmp_path / "pic.png").write_bytes(png)
    (tmp_path / "notes.txt").write_text("hello")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/big.png":
            return httpx.Response(200, content=png + b"\0" * 2000)
        return httpx.Response(404 if request.url.path == "/gone.png" else 503)

    loader = MediaLoader(
        media_dirs=[tmp_path], max_bytes=len(png) + 100, transport=httpx.MockTransport(answer)
    )
    media = await loader.load("pic.png")
    assert (media.filename, media.content_type, media.data) == ("pic.png", "image/png", png)
    assert (await loader.load("file:pic.png")).data == png
    for bad, message in [
        ("/etc/passwd", "inside the worker's --media-dir"),
        ("../secrets.png", "inside the worker's --media-dir"),
        ("missing.png", "in none of the worker's media folders"),
        ("notes.txt", "not an image or video"),
        ("https://cdn.test/big.png", "is over"),
        ("https://cdn.test/gone.png", "HTTP 404"),
    ]:
        with pytest.raises(InvalidContent, match=message):
            await loader.load(bad)
    with pytest.raises(Transient, match="HTTP 503"):
        await loader.load("https://cdn.test/flaky.png")


def test_content_type_is_sniffed_from_bytes() -> None:
    assert sniff_content_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_content_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"\0\0\0\x18ftypmp42") == "video/mp4"
    assert sniff_content_type(b"<html>") is None


# ---- the account host -----------------------------------------------------------------------


class EchoClient(PlatformClient):
    """A client of a fake platform whose errors echo the credential back."""

    platform: ClassVar[str] = "echo"
    made: ClassVar[int] = 0

    def __init__(self, account: AccountConfig, ctx: PlatformContext) -> None:
        super().__init__(account, ctx)
        self.token = account.secret("access_token")
        type(self).made += 1

    async def prepare(self, job: JobSpec, t: Transcript) -> Prepared:
        request = self.http.build_request(
            "POST", "/posts", headers={"Authorization": f"Bearer {self.token.reveal()}"}
        )
        self.check(await self.send(t, request))
        return Prepared()

    async def commit(self, job: JobSpec, prepared: Prepared, t: Transcript) -> Published:
        raise RuntimeError(f"bug holding {self.token.reveal()}")

    async def verify(self, job: JobSpec, t: Transcript) -> Published | None:
        return None

    async def check_login(self, t: Transcript) -> bool:
        return True

    def error_for(self, response: httpx.Response) -> AdapterError:
        return InvalidContent(f"echo said: {response.text}")


async def test_host_keeps_one_client_per_account_and_scrubs_errors(tmp_path: Path) -> None:
    redactor = Redactor()
    accounts_file = write(
        tmp_path / "a.toml",
        """
[[account]]
platform = "echo"
account = "a1"
base_url = "http://echo.test"
credentials = { access_token = "env:T1" }
[[account]]
platform = "echo"
account = "a2"
base_url = "http://echo.test"
credentials = { access_token = "env:T1" }
""",
    )
    accounts = load_accounts(accounts_file, redactor=redactor, environ={"T1": SECRET})

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, text=f"bad token {request.headers['authorization']}")

    ctx = PlatformContext(
        clock=SystemClock(),
        media=MediaLoader(),
        redactor=redactor,
        transport=httpx.MockTransport(echo),
    )
    EchoClient.made = 0
    host = AccountHost(accounts, ctx, classes={"echo": EchoClient})
    assert EchoClient.made == 2
    assert {(c.platform, c.account) for c in host.capabilities()} == {
        ("echo", "a1"),
        ("echo", "a2"),
    }
    assert host.client("echo", "a1") is host.client("echo", "a1")
    with pytest.raises(UnknownAccount, match="no credentials for echo:zz"):
        host.client("echo", "zz")

    job = JobSpec(job_id="j1", platform="echo", account="a1", text="hi")
    adapter = host.factory()("echo")
    with pytest.raises(InvalidContent) as bad:
        await adapter.prepare(job)
    assert SECRET not in bad.value.message and REDACTED in bad.value.message
    with pytest.raises(Transient) as bug:
        await adapter.commit(job, Prepared())
    assert SECRET not in bug.value.message
    card = await adapter.screenshot("on_failure")
    assert card is not None and card.startswith(b"\x89PNG")
    transcript = adapter._t  # type: ignore[attr-defined]
    assert any("authorization: [redacted]" in line for line in transcript.lines)
    assert all(SECRET not in line for line in transcript.lines)
    await host.aclose()


def test_unknown_platform_in_accounts_is_refused(tmp_path: Path) -> None:
    account = AccountConfig(platform="myspace", account="a", base_url="https://m", credentials={})
    ctx = PlatformContext(clock=SystemClock(), media=MediaLoader(), redactor=Redactor())
    with pytest.raises(AccountsError, match="no adapter for platform 'myspace'"):
        AccountHost((account,), ctx, classes={"echo": EchoClient})


def test_worker_command_line_refuses_bad_accounts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts_file = write(
        tmp_path / "a.toml",
        f"""
[[account]]
platform = "mastodon"
account = "acme"
base_url = "https://m.example"
credentials = {{ access_token = "{SECRET}" }}
""",
    )
    base = ["--coordinator", "127.0.0.1:1", "--device-id", "w"]
    assert worker_main([*base, "--accounts", str(accounts_file)]) == 2
    err = capsys.readouterr().err
    assert "written inline" in err and SECRET not in err
    assert worker_main(base) == 2
    assert "nothing to serve" in capsys.readouterr().err
    assert worker_main([*base, "--platform", "sandbox"]) == 2
    assert "--platform needs --sandbox-url" in capsys.readouterr().err


def test_transcript_records_uploads_by_size_and_masks_auth() -> None:
    redactor = Redactor()
    redactor.add(SECRET)
    transcript = Transcript(redactor)
    request = httpx.Request(
        "POST",
        "https://platform.test/upload?kind=image",
        files={"file": ("pic.png", render_card("t", ["x"]), "image/png")},
        headers={"Authorization": f"Bearer {SECRET}", "Idempotency-Key": "pr-1"},
    )
    transcript.request(request, sensitive=False)
    assert transcript.lines[0] == "POST /upload?kind=image"
    assert "> authorization: [redacted]" in transcript.lines
    assert "> idempotency-key: pr-1" in transcript.lines
    assert (
        transcript.lines[-1].startswith("> (multipart/form-data")
        and "bytes)" in transcript.lines[-1]
    )
    assert all(SECRET not in line for line in transcript.lines)


def test_worker_metrics_port_in_use_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = ["--coordinator", "127.0.0.1:1", "--device-id", "w", "--platform", "sandbox"]
        argv += ["--sandbox-url", "http://127.0.0.1:1", "--metrics-listen", f"127.0.0.1:{port}"]
        assert worker_main(argv) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port} (--metrics-listen)" in capsys.readouterr().err
