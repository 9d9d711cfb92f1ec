"""DNS-SD announcement of the station to terminals on the LAN: ``<gateway id>._egw._tcp.local.``.

The service record points at the terminal API port; the TXT record carries the gateway id, the pairing
port and the SHA-256 of the station's TLS certificate. Finding a station this way gives an address,
never trust: pairing still needs the QR code's one-time code and the pinned digest. When the API is
bound to one address only that interface is used (loopback included, for tests); a failure to announce
is logged and never stops the station.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from zeroconf import IPVersion, ServiceInfo
from zeroconf.asyncio import AsyncZeroconf

__all__ = ["Announcer", "SERVICE_TYPE"]

log = logging.getLogger("egw.terminal")
SERVICE_TYPE = "_egw._tcp.local."


class Announcer:
    def __init__(self, gateway_id: str, host: str, api_port: int, pairing_port: int, fingerprint: str) -> None:
        self.host = host
        addresses = [host] if host not in ("", "0.0.0.0", "::") else _local_addresses()
        self.info = ServiceInfo(
            SERVICE_TYPE, f"{gateway_id}.{SERVICE_TYPE}", port=api_port,
            parsed_addresses=addresses, server=f"{socket.gethostname().split('.')[0]}-egw.local.",
            properties={"gw": gateway_id, "pair": str(pairing_port), "sha256": fingerprint, "v": "1"})
        self.zeroconf: AsyncZeroconf | None = None

    async def start(self) -> bool:
        try:
            interfaces = [self.host] if self.host not in ("", "0.0.0.0", "::") else None
            if interfaces:
                self.zeroconf = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            else:
                self.zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
            await self.zeroconf.async_register_service(self.info, allow_name_change=True)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("the station is not announced on the LAN (DNS-SD %s): %s; terminals pair with the QR code's address",
                        SERVICE_TYPE, exc)
            await self.stop()
            return False
        return True

    async def stop(self) -> None:
        if self.zeroconf is not None:
            try:
                await self.zeroconf.async_unregister_all_services()
                await self.zeroconf.async_close()
            except (OSError, RuntimeError) as exc:
                log.debug("DNS-SD shutdown: %s", exc)
            self.zeroconf = None


def _local_addresses() -> list[str]:
    found = set()
    try:
        for family, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            if family == socket.AF_INET and not ipaddress.ip_address(sockaddr[0]).is_loopback:
                found.add(str(sockaddr[0]))
    except OSError:
        pass
    return sorted(found) or ["127.0.0.1"]
