"""Pairing and mutual TLS for mobile terminals (issue #19, item 1), against a real `egw run` on loopback.

Attack tests: a client without a certificate, with a certificate from another CA, a revoked terminal
(on a new connection and on a keep-alive one opened before the revocation), a spent or guessed code, a
station whose certificate is not the pinned one: each must be refused."""

from __future__ import annotations

import json
import re
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from protos.pki_roles import Role, require_role
from simulators.terminal.client import PairingFailed, TerminalClient, parse_offer
from tests.conftest import run_egw
from tests.terminal_support import custody_entries, init_data, offer_code, paired_terminal, station, write_config


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One station for the module (starting `egw run` costs seconds); each test pairs its own terminals."""
    home = tmp_path_factory.mktemp("station")
    data = init_data(home)
    with station(write_config(home, data)) as (proc, ready):
        yield data, ready


def _handshake(url: str, context: ssl.SSLContext) -> bytes:
    """Connect, send a request, return whatever comes back (b'' when the station hung up)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return tls.recv(4096)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return b""


def test_pair_then_mutual_tls_with_the_terminal_role(tmp_path, running):
    data, ready = running
    client = paired_terminal(tmp_path, data, ready, officer="100001")
    cert = x509.load_pem_x509_certificate(client.cert_path.read_bytes())
    terminal_id = require_role(cert, Role.TERMINAL)
    me = client.get_json("/api/v1/me")
    assert me["terminal_id"] == terminal_id and me["officer_id"] == "100001"
    listing = json.loads(run_egw("terminal", "ls", "--data-dir", str(data), "--json", check=True).stdout)
    assert [(t["officer_id"], t["revoked_at"]) for t in listing if t["id"] == terminal_id] == [("100001", None)]
    paired = [e for e in custody_entries(data) if e["event"] == "terminal-paired" and e["terminal_id"] == terminal_id]
    assert [e["officer_id"] for e in paired] == ["100001"]
    calls = [e for e in custody_entries(data) if e["event"] == "terminal-request" and e["terminal_id"] == terminal_id]
    assert [(e["action"], e["officer_id"]) for e in calls] == [("me", "100001")]


def test_a_client_without_a_certificate_or_from_another_ca_is_refused(tmp_path, running):
    data, ready = running
    client = paired_terminal(tmp_path, data, ready)
    anonymous = ssl.create_default_context(cafile=str(client.ca_path))
    assert _handshake(ready["terminal_api"], anonymous) == b""
    # a certificate with the terminal role from a CA of the attacker's own
    from gateway.terminal.ca import TerminalCA

    rogue = TerminalCA(tmp_path / "rogue", "gw-rogue")
    rogue_client = TerminalClient(tmp_path / "rogue-terminal")
    issued = rogue.issue_terminal(rogue_client.csr_pem().encode(), "t-rogue")
    rogue_client.cert_path.write_bytes(issued.pem())
    forged = ssl.create_default_context(cafile=str(client.ca_path))
    forged.load_cert_chain(rogue_client.cert_path, rogue_client.key_path)
    assert _handshake(ready["terminal_api"], forged) == b""
    assert b"200 OK" in _handshake(ready["terminal_api"], client.ssl_context())


def test_revoked_terminal_is_refused_at_the_tls_layer_even_on_an_open_connection(tmp_path, running):
    data, ready = running
    client = paired_terminal(tmp_path, data, ready, officer="100002")
    import http.client

    host, port = ready["terminal_api"].split("//")[1].rstrip("/").split(":")
    keep_alive = http.client.HTTPSConnection(host, int(port), context=client.ssl_context(), timeout=10)
    keep_alive.request("GET", "/api/v1/me")
    assert keep_alive.getresponse().read() and True
    terminal_id = client.paired["terminal_id"]
    out = run_egw("terminal", "revoke", terminal_id, "--by", "admin-7", "--reason", "lost", "--data-dir", str(data), check=True)
    assert "revoked" in out.stdout
    assert _handshake(ready["terminal_api"], client.ssl_context()) == b""  # a new connection: aborted after the handshake
    keep_alive.request("GET", "/api/v1/me")  # the connection opened before the revocation
    answer = keep_alive.getresponse()
    assert answer.status == 403 and b"revoked" in answer.read()
    listing = json.loads(run_egw("terminal", "ls", "--data-dir", str(data), "--json", check=True).stdout)
    assert [t["revoked_by"] for t in listing if t["id"] == terminal_id] == ["admin-7"]
    revoked = [e for e in custody_entries(data) if e["event"] == "terminal-revoked"]
    assert [(e["terminal_id"], e["officer_id"], e["revoked_by"]) for e in revoked] == [(terminal_id, "100002", "admin-7")]


def test_a_code_pairs_once_and_a_guess_or_a_wrong_station_never(tmp_path, running):
    data, ready = running
    uri = offer_code(data, ready["terminal_pairing"])
    TerminalClient(tmp_path / "first").pair(parse_offer(uri), officer_id="100003")
    with pytest.raises(PairingFailed, match="403"):
        TerminalClient(tmp_path / "second").pair(parse_offer(uri), officer_id="100003")
    guessed = parse_offer(re.sub(r"code=[A-Z0-9]+", "code=AAAAAAAAAAAAAAAA", offer_code(data, ready["terminal_pairing"])))
    with pytest.raises(PairingFailed, match="403"):
        TerminalClient(tmp_path / "third").pair(guessed, officer_id="100003")
    wrong_pin = parse_offer(re.sub(r"sha256=[0-9a-f]+", "sha256=" + "0" * 64, offer_code(data, ready["terminal_pairing"])))
    with pytest.raises(PairingFailed, match="not the one in the QR code"):
        TerminalClient(tmp_path / "fourth").pair(wrong_pin, officer_id="100003")


def test_a_code_issued_for_an_officer_binds_the_terminal_to_that_officer(tmp_path, running):
    data, ready = running
    uri = offer_code(data, ready["terminal_pairing"], officer="100004")
    with pytest.raises(PairingFailed, match="issued for officer 100004"):
        TerminalClient(tmp_path / "a").pair(parse_offer(uri), officer_id="999999")
    client = TerminalClient(tmp_path / "b")
    client.pair(parse_offer(offer_code(data, ready["terminal_pairing"], officer="100004")), officer_id=None)
    assert client.get_json("/api/v1/me")["officer_id"] == "100004"


def test_the_station_screen_shows_a_qr_code_that_pairs(tmp_path, running):
    data, ready = running
    with urllib.request.urlopen(ready["screen"] + "pairing?lang=en", timeout=10) as response:
        page = response.read().decode()
        csp = response.headers["Content-Security-Policy"]
    assert "<svg" in page and "<script" not in page and "script-src 'self'" in csp
    code = re.search(r'id="pairing-code">([A-Z0-9]+)<', page).group(1)
    fingerprint = re.search(r"<code>([0-9a-f]{64})</code>", page).group(1)
    offer = parse_offer(f"egw-pair:?url={ready['terminal_pairing']}&code={code}&sha256={fingerprint}")
    client = TerminalClient(tmp_path / "from-screen")
    client.pair(offer, officer_id="100005")
    assert client.get_json("/api/v1/me")["officer_id"] == "100005"


def _non_loopback_address() -> str:
    """This host's own LAN address (the connection stays on the host)."""
    import subprocess

    addresses = [a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
                 if "." in a and not a.startswith("127.")]
    assert addresses, "the host has no IPv4 address besides loopback to test from"
    return addresses[0]


def test_the_pairing_page_is_not_served_to_the_network(tmp_path):
    """Whoever reads a code can pair: the screen listening on the LAN must not hand codes to the LAN."""
    data = init_data(tmp_path)
    config = write_config(tmp_path, data)
    config.write_text(config.read_text().replace('[screen]\nlisten = "127.0.0.1:0"', '[screen]\nlisten = "0.0.0.0:0"'))
    with station(config) as (_, ready):
        port = ready["screen"].rstrip("/").rsplit(":", 1)[1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://{_non_loopback_address()}:{port}/pairing", timeout=10)
        assert refused.value.code == 403 and b"station's own screen" in refused.value.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pairing", timeout=10) as page:
            assert b'id="pairing-code"' in page.read()


def test_a_guesser_is_slowed_down(tmp_path):
    data = init_data(tmp_path)
    with station(write_config(tmp_path, data)) as (_, ready):
        uri = offer_code(data, ready["terminal_pairing"])
        for attempt in range(5):
            with pytest.raises(PairingFailed, match="403"):
                TerminalClient(tmp_path / f"g{attempt}").pair(parse_offer(re.sub(r"code=\w+", f"code=GUESS{attempt}", uri)),
                                                              officer_id="1")
        with pytest.raises(PairingFailed, match="429"):  # even the right code, from this address, for now
            TerminalClient(tmp_path / "right").pair(parse_offer(uri), officer_id="1")
