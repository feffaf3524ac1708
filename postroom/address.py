"""`HOST:PORT` addresses as the command lines of every postroom process take them."""

from __future__ import annotations


def split_host_port(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) -> (host, port); raises ValueError otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port_text)
