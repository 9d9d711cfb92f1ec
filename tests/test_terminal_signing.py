"""Signing sessions started from a terminal (issue #19 item 2), end to end with real parts: ``egw run`` with the
signature pad and fingerprint simulators configured as its devices and the platform's trust services (agency seal)
on loopback; ``egw simulate terminal --sign`` uploads a photo, starts the session and follows it; the pad simulator
signs as 王小明; the terminal gets the sealed record's evidence id and a one-time link that serves the PDF once.
The mobile page does the same in headless Chromium. A station without the agency seal hands nothing out.

Attacks: another officer's terminal cannot read the session (GET or stream: 404, as for an unknown id); a revoked
terminal cannot start one (refused at the TLS layer); a station without a pad says so (409) before anyone waits."""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.error
import urllib.request

import pytest

from gateway.evidence import dsse
from gateway.evidence.evidence_service import EvidenceService
from simulators.terminal.client import SigningFailed, TerminalClient, follow_signing, start_signing
from tests.conftest import run_egw
from tests.seal_support import enrolled_gateway, trust_platform
from tests.terminal_support import custody_entries, offer_code, paired_terminal, station, write_config
from tests.test_documents import FORM, _simulators, _stop

OFFICER = "31010001"


@pytest.fixture(scope="module")
def signing_station(tmp_path_factory):
    """``egw run`` (enrolled, agency seal on loopback) with the pad and fingerprint simulators as configured devices."""
    home = tmp_path_factory.mktemp("termsign")
    with trust_platform(home / "platform") as platform:
        data = home / "data"
        enrolled_gateway(data, platform, "gw-termsign")
        (finger, finger_url), (pad, pad_url) = _simulators()
        try:
            config = write_config(home, data)
            config.write_text(config.read_text() + f'[platform]\ntrust_services = "{platform.url}"\n'
                              f'[[devices]]\nkind = "signpad"\nname = "pad"\nusbip = "{pad_url}"\n'
                              f'[[devices]]\nkind = "fingerprint"\nname = "reader"\nport = "{finger_url}"\n',
                              encoding="utf-8")
            with station(config) as (_, ready):
                ready["devices_toml"] = config.read_text().partition("[[devices]]")[1] + config.read_text().partition("[[devices]]")[2]
                yield home, data, ready
        finally:
            _stop(pad, finger)


@pytest.fixture(scope="module")
def signed(signing_station):
    """The simulated terminal's run: pair, upload one photo into case A-17, have 王小明 sign the on-site record."""
    home, data, ready = signing_station
    (home / "form.toml").write_text(FORM, encoding="utf-8")
    proc = run_egw("simulate", "terminal", "--dir", str(home / "t1"), "--pair", offer_code(data, ready["terminal_pairing"]),
                   "--officer", OFFICER, "--photos", "1", "--case", "A-17", "--sign", str(home / "form.toml"),
                   "--qr", str(home / "link.svg"), timeout=240)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    return events, TerminalClient(home / "t1")


def test_the_party_signs_and_the_terminal_gets_the_sealed_record_and_a_one_time_link(signing_station, signed):
    home, data, ready = signing_station
    events, client = signed
    states = [e["state"] for e in events if e["event"] == "signing"]
    assert states[-1] == "delivered" and "waiting_for_party" in states
    order = ["rendering", "waiting_for_party", "signed", "sealed", "stored", "delivered"]
    assert [order.index(s) for s in states] == sorted(order.index(s) for s in states)  # the stream may coalesce, never reorder
    done = next(e for e in events if e["event"] == "signed")
    session = client.get_json(f"/api/v1/signing-sessions/{done['session_id']}")
    assert [step["state"] for step in session["steps"]] == order[1:]  # every step, in order
    assert session["link"] == done["link"] and session["error"] is None
    photo = next(e for e in events if e["event"] == "uploaded")["evidence_id"]
    assert done["seal"] == "agency" and done["case_no"] == "A-17"
    assert (home / "link.svg").read_text().lstrip().startswith("<svg")

    with EvidenceService(data, read_only=True) as service:
        row = service.state.get(done["evidence_id"])
        document = dsse.Envelope.from_bytes(row.manifest).payload_json()["extra"]["document"]
        signing = json.loads(service.store.path_for(service.state.get(done["signing_evidence_id"]).sha256).read_bytes())
    assert row.kind == "document" and row.sha256 == done["sha256"] and row.officer_id == OFFICER
    assert document["sealed"] and document["seal"] == "agency" and document["cites"] == [photo]
    assert document["signing_record"] == done["signing_evidence_id"]
    assert signing["signer"] == {"name": "王小明", "role": "party"} and "signature" in signing and "fingerprint" in signing
    case = client.get_json("/api/v1/cases/A-17")
    assert {i["evidence_id"] for i in case["items"]} == {photo, done["evidence_id"]}

    assert done["link"].startswith(ready["screen"].rstrip("/") + "/delivery/" + done["evidence_id"] + "/")
    with urllib.request.urlopen(done["link"], timeout=30) as answer:
        pdf = answer.read()
    assert pdf.startswith(b"%PDF") and hashlib.sha256(pdf).hexdigest() == done["sha256"]
    with pytest.raises(urllib.error.HTTPError) as again:
        urllib.request.urlopen(done["link"], timeout=30)
    assert again.value.code == 410  # once only

    mine = [e for e in custody_entries(data) if e["event"] == "terminal-request" and e.get("session_id") == done["session_id"]]
    actions = [e["action"] for e in mine]
    assert actions[0] == "signing_session_started" and {"signing_session_waiting_for_party", "signing_session_signed",
                                                        "signing_session_sealed", "signing_session_stored",
                                                        "signing_session_link_issued", "signing_session_delivered"} <= set(actions)
    assert {(e["officer_id"], e["terminal_id"]) for e in mine} == {(OFFICER, client.paired["terminal_id"])}
    token = done["link"].rsplit("/", 1)[1]
    for database in data.glob("state.db*"):  # only the token's SHA-256 is kept (state.db and its write-ahead log)
        assert token.encode() not in database.read_bytes()
    assert not [e for e in custody_entries(data) if token in json.dumps(e)]


def test_another_officers_terminal_cannot_read_the_session(signing_station, signed):
    home, data, ready = signing_station
    events, owner = signed
    session_id = next(e for e in events if e["event"] == "signed")["session_id"]
    assert owner.get_json(f"/api/v1/signing-sessions/{session_id}")["state"] == "delivered"
    other = paired_terminal(home, data, ready, officer="31010009", name="other")
    for path in (f"/api/v1/signing-sessions/{session_id}", f"/api/v1/signing-sessions/{session_id}/events"):
        status, _, body = other.request("GET", path)
        assert status == 404 and "link" not in json.loads(body) and b"delivery/" not in body
    unknown, _, _ = other.request("GET", "/api/v1/signing-sessions/0123456789abcdef01234567")
    assert unknown == 404  # the same answer as for a session that does not exist
    refused = [e for e in custody_entries(data) if e["event"] == "terminal-request" and e["action"] == "signing_session_read_refused"]
    assert {e["officer_id"] for e in refused} == {"31010009"}


def test_a_revoked_terminal_cannot_start_a_session(signing_station):
    home, data, ready = signing_station
    client = paired_terminal(home, data, ready, officer="31010005", name="revoked")
    run_egw("terminal", "revoke", client.paired["terminal_id"], "--by", "admin-1", "--reason", "lost", "--data-dir", str(data),
            check=True)
    before = len(custody_entries(data))
    with pytest.raises((OSError, ssl.SSLError, SigningFailed)):
        start_signing(client, {"template": "onsite", "form": {}, "party": {"name": "王小明"}})
    after = custody_entries(data)[before:]
    assert not [e for e in after if e.get("action", "").startswith("signing_session")]


def test_bad_requests_are_refused_before_the_party_is_called(signed):
    import tomllib

    client = signed[1]
    form = tomllib.loads(FORM)
    party, fields = form.pop("party"), form
    for body, status, words in (({"template": "nope", "form": fields, "party": party}, 400, "template"),
                                ({"template": "onsite", "form": fields, "party": {}}, 400, "party.name"),
                                ({"template": "onsite", "form": fields, "party": party, "cites": ["0" * 36]}, 404, "no evidence"),
                                ({"template": "onsite", "form": {**fields, "officers": "x"}, "party": party}, 400, "form")):
        code, _, answer = client.request("POST", "/api/v1/signing-sessions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        refusal = json.loads(answer)
        assert code == status and words in refusal["error"] and refusal["hint"], (body, code, refusal)


async def _sign_in_the_page(client: TerminalClient, shots) -> dict[str, str]:
    """The mobile page's "签字" flow in headless Chromium (through the mutual-TLS forwarder of test_terminal_mobile)."""
    import asyncio

    from tests.chromium import Chromium
    from tests.test_terminal_mobile import HEIGHT, WIDTH, _forwarder

    runner, base = await _forwarder(client.api_url, client.ssl_context())
    browser = Chromium()
    try:
        await browser.open()
        await browser.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=2, mobile=True)
        await browser.load(base + "/m/")
        await browser.wait_for_text(lambda text: "签字" in text and "当事人" in text, 10, "the sign section in Chinese")
        await browser.evaluate("""(() => {
            const set = document.querySelector('fieldset[data-template="onsite"]');
            const put = (selector, value) => { set.querySelector(selector).value = value; };
            put('[data-key="case_number"]', '市监检〔2026〕018号'); put('[data-key="time"]', '2026年12月6日 11:00');
            put('[data-key="place"]', '某市某区农贸市场3号摊位'); put('[data-key="findings"]', '当事人经营的散装大米未标明产地。');
            put('[data-officer-name]', '张伟'); put('[data-party="name"]', '王小明');
            document.getElementById('case-no').value = 'A-18';
            document.getElementById('sign-start').click();
        })()""")
        found = ""
        for _ in range(600):  # the pad simulator signs within seconds; a wedged session fails the test, not the suite
            found = await browser.evaluate("(document.getElementById('sign-result').dataset.evidenceId || '') + "
                                           "(document.querySelector('#sign-qr svg') ? ' qr' : '') + "
                                           "(document.getElementById('sign-state').className === 'bad' ? ' failed' : '')")
            if found.endswith((" qr", " failed")):
                break
            await asyncio.sleep(0.2)
        state = await browser.evaluate("document.getElementById('sign-state').innerText")
        overflow = await browser.evaluate("document.documentElement.scrollWidth")
        await browser.screenshot(shots / "mobile-sign-zh_CN.png", full_page=True)
        return {"found": found, "state": state, "overflow": str(overflow)}
    finally:
        await browser.close()
        await runner.cleanup()


def test_the_mobile_page_signs_and_shows_the_qr_code(signing_station, signed, tmp_path):
    import asyncio

    home, data, _ = signing_station
    client = signed[1]
    seen = asyncio.run(_sign_in_the_page(client, tmp_path))
    evidence_id, _, qr = seen["found"].partition(" ")
    assert qr == "qr" and evidence_id, seen
    assert "扫码" in seen["state"] and int(seen["overflow"]) <= 390, seen
    case = client.get_json("/api/v1/cases/A-18")
    assert [i["evidence_id"] for i in case["items"]] == [evidence_id]
    with EvidenceService(data, read_only=True) as service:
        row = service.state.get(evidence_id)
    document = dsse.Envelope.from_bytes(row.manifest).payload_json()["extra"]["document"]
    assert row.kind == "document" and document["seal"] == "agency" and document["case_number"] == "市监检〔2026〕018号"


def test_a_station_without_the_agency_seal_hands_out_nothing(signing_station, signed, tmp_path):
    """The same pad and reader, a station that is not enrolled: the party signs, the record is stored (evidence is never
    dropped), but unsealed, and the session fails there: no link, no QR code, the error names the stored record."""
    import tomllib

    from tests.terminal_support import init_data

    _, _, first = signing_station
    # (runs after the sessions above have finished: the pad simulator is free for this second station)
    data = init_data(tmp_path, "gw-unsealed")
    config = write_config(tmp_path, data)
    config.write_text(config.read_text() + first["devices_toml"], encoding="utf-8")
    form = tomllib.loads(FORM)
    party = form.pop("party")
    with station(config) as (_, ready):
        client = paired_terminal(tmp_path, data, ready, officer=OFFICER)
        started = start_signing(client, {"template": "onsite", "form": form, "party": party})
        final = list(follow_signing(client, started["session_id"]))[-1]
    assert final["state"] == "failed" and "unsealed" in final["error"]["error"] and final["error"]["hint"]
    assert "link" not in final and "qr_svg" not in final
    assert [step["state"] for step in final["steps"]] == ["waiting_for_party", "signed", "failed"]
    stored = final["error"]["error"].split("evidence ")[1].split(",")[0]
    with EvidenceService(data, read_only=True) as service:
        document = dsse.Envelope.from_bytes(service.state.get(stored).manifest).payload_json()["extra"]["document"]
    assert document["seal"] == "none" and not document["sealed"]
    import sqlite3

    with sqlite3.connect(data / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM delivery_links").fetchone()[0] == 0
