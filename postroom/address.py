"""`HOST:PORT` addresses as the command lines of every postroom process take them."""

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
