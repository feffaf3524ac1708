"""`postroom vault draft|watch`: write a draft into a vault; bridge a vault to a coordinator.

The coordinator connection is the CLI's own (postroom_cli): `--coordinator`, the operator token
from `POSTROOM_TOKEN` / `--token-file`, TLS from `--ca` / `POSTROOM_CA`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import shutil
import signal
import sys
import threading
import tomllib
from pathlib import Path
from types import FrameType

from postroom.tls import ClientTls
from postroom_cli.client import DEFAULT_COORDINATOR, CliError, PublishingClient, exit_code
from postroom_cli.credentials import operator_token, read_secret_file
from postroom_vault import VaultError
from postroom_vault import document as docs
from postroom_vault.bridge import Bridge
from postroom_vault.config import (
    DEFAULT_ACTOR,
    DEFAULT_PARALLEL,
    DEFAULT_RESCAN_S,
    BridgeConfig,
    parse_account,
)
from postroom_vault.render import new_body


def new_id(now: dt.datetime) -> str:
    return f"social_post_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


def write_draft(
    vault: Path,
    text: str,
    platforms: list[str],
    *,
    image: Path | None = None,
    now: dt.datetime | None = None,
) -> Path:
    """A new draft in `Pending_Approval/`; an image outside the vault is copied into `Media/`."""
    if not text.strip():
        raise VaultError("--text is empty: give the post's text")
    if not platforms:
        raise VaultError("give at least one --platform (facebook, instagram, twitter, …)")
    vault = vault.resolve()
    now = now or dt.datetime.now(dt.UTC)
    post_id = new_id(now)
    front: dict[str, object] = {
        "id": post_id,
        "type": "social_media_post",
        "status": "pending_approval",
        "created_at": docs.utc_text(now),
        "platforms": [p.strip().lower() for p in platforms],
    }
    if image is not None:
        if not image.is_file():
            raise VaultError(f"--image {image}: no such file")
        media = vault / docs.MEDIA
        media.mkdir(parents=True, exist_ok=True)
        try:
            stored = docs.inside(vault, image)
        except VaultError:
            stored = media / f"{post_id}_{image.name}"
            shutil.copyfile(image, stored)
        front["image"] = stored.relative_to(vault).as_posix()
    folder = vault / docs.PENDING
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{post_id}.md"
    doc = docs.Document(front=front, body=new_body(front, text))
    docs.write_atomic(path, docs.serialize(doc))
    return path


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        default=os.environ.get("POSTROOM_COORDINATOR") or DEFAULT_COORDINATOR,
    )
    parser.add_argument("--token-file", type=Path, metavar="PATH", default=None)
    parser.add_argument(
        "--approver-token-file",
        type=Path,
        metavar="PATH",
        default=None,
        help="approve with this token (four eyes: someone other than the author approves)",
    )
    parser.add_argument("--ca", type=Path, metavar="PATH", default=None)
    parser.add_argument("--tls-cert", type=Path, metavar="PATH", default=None)
    parser.add_argument("--tls-key", type=Path, metavar="PATH", default=None)
    parser.add_argument("--insecure-plaintext", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postroom vault", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    draft = sub.add_parser("draft", help="write a draft into VAULT/Pending_Approval/")
    draft.add_argument("--vault", type=Path, required=True)
    draft.add_argument("--text", required=True)
    draft.add_argument("--platform", action="append", default=[], metavar="NAME")
    draft.add_argument("--image", type=Path, default=None)
    watch = sub.add_parser("watch", help="bridge VAULT to a coordinator until Ctrl-C")
    watch.add_argument("--vault", type=Path, required=True)
    watch.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="NAME=[PLATFORM:]ACCOUNT",
        help="where the vault's platform NAME publishes, e.g. facebook=acme, twitter=acme "
        "(twitter means postroom's x), instagram=sandbox:ig; repeat per platform",
    )
    watch.add_argument("--rescan", type=float, default=DEFAULT_RESCAN_S, metavar="SECONDS")
    watch.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL)
    watch.add_argument("--actor", default=DEFAULT_ACTOR)
    watch.add_argument(
        "--force-polling",
        action="store_true",
        help="poll the folder instead of OS file events (network and some container disks)",
    )
    watch.add_argument("--ready-file", type=Path, default=None, help=argparse.SUPPRESS)
    _connection_args(watch)
    return parser


def vault_accounts(vault: Path) -> list[str]:
    """`[accounts]` of `VAULT/.postroom.toml` as NAME=WHERE specs (flags add to / override them)."""
    path = vault / ".postroom.toml"
    if not path.exists():
        return []
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get("accounts", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VaultError(f"{path}: {exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise VaultError(f'{path}: write [accounts] with lines like facebook = "acme-page"')
    return [f"{name}={where}" for name, where in table.items()]


def _watch(args: argparse.Namespace) -> int:
    specs = [*vault_accounts(args.vault), *args.account]
    accounts = dict(parse_account(spec) for spec in specs)
    if not accounts:
        raise VaultError(
            "give --account NAME=ACCOUNT for each platform the vault posts to "
            "(or an [accounts] table in VAULT/.postroom.toml)"
        )
    if args.rescan <= 0 or args.parallel < 1:
        raise VaultError("--rescan must be above 0 seconds and --parallel at least 1")
    config = BridgeConfig(
        vault=args.vault,
        accounts=accounts,
        rescan_s=args.rescan,
        parallel=args.parallel,
        actor=args.actor,
        force_polling=args.force_polling,
    )
    tls = ClientTls.from_env(
        ca=args.ca, cert=args.tls_cert, key=args.tls_key, insecure_plaintext=args.insecure_plaintext
    )
    token = operator_token(args.token_file)
    approver_token = (
        read_secret_file(args.approver_token_file, "approver token")
        if args.approver_token_file
        else token
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with (
        PublishingClient(args.coordinator, token=token, tls=tls) as client,
        PublishingClient(args.coordinator, token=approver_token, tls=tls) as approver,
    ):
        bridge = Bridge(config, client, approver=approver)
        print(f"vault: watching {bridge.vault} for {args.coordinator}", flush=True)
        if args.ready_file is not None:
            docs.write_atomic(args.ready_file, b"ready\n")
        try:
            bridge.run(stop)
        finally:
            bridge.close()
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "draft":
            path = write_draft(args.vault, args.text, args.platform, image=args.image)
            print(path)
            return 0
        return _watch(args)
    except VaultError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CliError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return exit_code(exc)
