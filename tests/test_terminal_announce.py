"""DNS-SD (#19, item 7): a zeroconf browser on the same host finds the station's ``_egw._tcp`` service on
loopback, with the API port, the pairing port and the station certificate's digest in its TXT record."""

from __future__ import annotations

import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

from tests.terminal_support import init_data, station, write_config


class _Seen(ServiceListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self.names.append(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        pass


def test_a_browser_on_this_host_finds_the_station(tmp_path):
    data = init_data(tmp_path, "gw-dnssd")
    with station(write_config(tmp_path, data, announce=True)) as (_, ready):
        browser = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
        try:
            seen = _Seen()
            ServiceBrowser(browser, "_egw._tcp.local.", seen)
            deadline = time.monotonic() + 10
            while not seen.names and time.monotonic() < deadline:
                time.sleep(0.1)
            assert seen.names == ["gw-dnssd._egw._tcp.local."]
            info = browser.get_service_info("_egw._tcp.local.", seen.names[0], timeout=5000)
        finally:
            browser.close()
    assert info is not None
    assert info.port == int(ready["terminal_api"].rstrip("/").rsplit(":", 1)[1])
    props = {k.decode(): v.decode() for k, v in info.properties.items() if v is not None}
    assert props["gw"] == "gw-dnssd" and props["pair"] == ready["terminal_pairing"].rstrip("/").rsplit(":", 1)[1]
    assert len(props["sha256"]) == 64 and "127.0.0.1" in info.parsed_addresses()
