"""Which ``Host:`` values the station screen and ``/metrics`` answer (DNS rebinding).

A web page on ``evil.example`` can make its own name resolve to 127.0.0.1 and then read
``http://evil.example:8080/api/state`` as same-origin: the browser only ever sends
``Host: evil.example``. So the station answers only Host values that name *this* station:

- loopback (``localhost``, ``127.0.0.0/8``, ``::1``) and this machine's host name;
- the address it is bound to, and for a wildcard bind (``0.0.0.0``, ``::``) the address the
  connection actually arrived on (an IP literal in Host cannot be rebound);
- the names configured under ``hostnames`` in ``gateway.toml``.

Everything else gets ``421 Misdirected Request`` with what to do.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

__all__ = ["HostPolicy", "MISDIRECTED_STATUS", "split_host"]

MISDIRECTED_STATUS = 421
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def split_host(header: str) -> str:
    """The host part of a Host header, lower-case, without port, brackets or a trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None


class HostPolicy:
    """The names one listener answers to."""

    def __init__(self, bound_host: str, names: Iterable[str] = ()) -> None:
        self.names = set(_LOOPBACK_NAMES) | {split_host(n) for n in names if n.strip()}
        self.names.add(socket.gethostname().lower().rstrip("."))
        self.bound = bound_host.strip("[]").lower()
        if self.bound not in _WILDCARDS:
            self.names.add(self.bound)

    def allows(self, host_header: str | None, local_address: str | None = None) -> bool:
        """Is ``host_header`` a name of this station? ``local_address`` is the address the request
        arrived on (only consulted for a wildcard bind)."""
        if not host_header:
            return False
        host = split_host(host_header)
        address = _ip(host)
        if address is None:
            return host in self.names
        if address.is_loopback:
            return True
        bound = _ip(self.bound)
        if bound is not None and not bound.is_unspecified:
            return address == bound
        arrived = _ip(local_address or "")
        return arrived is not None and address == arrived

    def refusal(self, host_header: str | None, port: int) -> str:
        """The 421 body: what was refused and how to reach the station instead."""
        where = self.bound if self.bound not in _WILDCARDS else "127.0.0.1"
        if ":" in where:
            where = f"[{where}]"
        return (f"421 Misdirected Request: this station does not answer to Host {host_header!r}.\n"
                f"Open it as http://{where}:{port}/ (or localhost), or add the name you use to "
                "`hostnames = [\"...\"]` at the top of gateway.toml and restart egw run.\n")
