"""`HOST:PORT` addresses as the command lines of every postroom process take them, and lists of
them (`--coordinator a:1,b:2`)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port); raises ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port_text)


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 and the name localhost; an empty host, 0.0.0.0 or :: mean every
    interface, which is not loopback."""
    host = host.strip().removeprefix("[").removesuffix("]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DNS_SCHEME = "dns:"


def without_scheme(target: str) -> str:
    """A gRPC target's `HOST:PORT`: `dns:///h:p`, `dns://resolver/h:p` and `dns:h:p` -> `h:p`."""
    if not target.startswith(DNS_SCHEME):
        return target
    rest = target.removeprefix(DNS_SCHEME)
    if rest.startswith("//"):
        _, _, rest = rest[2:].partition("/")  # the authority (a DNS server) is grpc's business
    return rest


def split_targets(text: str, flag: str = "--coordinator") -> tuple[str, ...]:
    """`a:1,b:2` -> ("a:1", "b:2"): several coordinators, each `HOST:PORT` or `dns:///NAME:PORT`
    (a name with several addresses: grpc's resolver tries them all). Repeats are dropped;
    ValueError names the part to fix."""
    targets: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        try:
            split_host_port(without_scheme(part))
        except ValueError:
            raise ValueError(
                f"{flag} {text!r}: {part!r} is not HOST:PORT or dns:///NAME:PORT "
                "(several are separated by commas)"
            ) from None
        targets.append(part)
    return tuple(dict.fromkeys(targets))
