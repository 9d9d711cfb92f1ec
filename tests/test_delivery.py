"""Electronic delivery (issue #16): a sealed record delivered to the party, acknowledged on a sealed delivery
receipt the party signed on the pad simulator, or refused before a witness; the one-time link served by the
station screen (real HTTP on loopback) opens once, for its document only, and not after it expires."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.evidence.evidence_service import EvidenceService
from gateway.station.live_state import Station
from gateway.web.screen import ScreenServer
from tests.conftest import run_egw
from tests.seal_support import enrolled_gateway, trust_platform
from tests.test_documents import FORM, _simulators, _stop, egw_here
from tests.test_schemas import errors

RECEIPT_FORM = """\
case_number = "市监检〔2026〕017号"
served_document = "现场检查笔录 市监检〔2026〕017号"
time = "2026年12月6日 10:20"
place = "某市某区农贸市场3号摊位"
method = "电子送达（站点屏幕、一次性链接）"

[[officers]]
name = "张伟"
id = "31010001"

[party]
name = "王小明"
"""


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """An enrolled gateway with an agency-sealed on-site record and the party's signed, sealed delivery receipt."""
    root = tmp_path_factory.mktemp("delivery")
    with trust_platform(root / "platform") as platform:
        data_dir = root / "gw"
        enrolled_gateway(data_dir, platform, "gw-delivery")
        (root / "form.toml").write_text(FORM, encoding="utf-8")
        (root / "receipt.toml").write_text(RECEIPT_FORM, encoding="utf-8")
        common = ("--data-dir", data_dir, "--json", "--trust-services", platform.url)
        code, out, err = egw_here("record", "new", "--template", "onsite", "--form", root / "form.toml", "-o", root / "r.pdf", *common)
        assert code == 0, err
        document = json.loads(out)
        assert document["seal"] == "agency"
        draft = root / "receipt-draft.pdf"
        code, _, err = egw_here("record", "draft", "--template", "delivery", "--form", root / "receipt.toml", "--cite",
                                document["evidence_id"], "-o", draft, "--data-dir", data_dir)
        assert code == 0, err
        (finger, finger_url), (pad, pad_url) = _simulators()
        try:
            signed = run_egw("sign", "--document", str(draft), "--signer", "王小明", "--signpad", pad_url, "--fingerprint",
                             finger_url, "--data-dir", str(data_dir), "--json", timeout=120)
        finally:
            _stop(pad, finger)
        assert signed.returncode == 0, signed.stderr
        code, out, err = egw_here("record", "new", "--template", "delivery", "--form", root / "receipt.toml", "--cite",
                                  document["evidence_id"], "--signing", json.loads(signed.stdout)["evidence_id"],
                                  "--signed-draft", draft, "-o", root / "receipt.pdf", *common)
        assert code == 0, err
        receipt = json.loads(out)
        assert receipt["seal"] == "agency"
        yield {"data_dir": data_dir, "root": root, "document": document, "receipt": receipt, "ca": platform.ca_file()}


def _outbox(data_dir: Path, document_id: str) -> list[dict]:
    with sqlite3.connect(data_dir / "state.db") as db:
        return [json.loads(bytes(r[0])) for r in db.execute("SELECT payload FROM outbox WHERE topic LIKE ? ORDER BY id",
                                                            (f"%/deliveries/{document_id}",))]


def _custody(data_dir: Path, evidence_id: str, event: str) -> list[dict]:
    with sqlite3.connect(data_dir / "state.db") as db:
        return [json.loads(bytes(r[0])) for r in db.execute("SELECT entry FROM custody WHERE evidence_id = ? AND event = ?",
                                                            (evidence_id, event))]


def _deliver(station: dict, *args: str) -> tuple[int, dict | None, str]:
    code, out, err = egw_here("record", "deliver", station["document"]["evidence_id"], "--party", "王小明",
                              "--data-dir", station["data_dir"], "--json", *args)
    return code, json.loads(out) if code == 0 else None, err


def _get_all(data_dir: Path, paths: list[str]) -> list[tuple[int, bytes]]:
    """GET each path, in order, from a real station screen server on a free loopback port."""

    async def run() -> list[tuple[int, bytes]]:
        with EvidenceService(data_dir) as service:
            server = ScreenServer(Station("gw-delivery"), "127.0.0.1", 0, service=service)
            base = (await server.start()).rstrip("/")
            try:
                async with aiohttp.ClientSession() as session:
                    answers = []
                    for path in paths:
                        async with session.get(base + path) as response:
                            answers.append((response.status, await response.read()))
                    return answers
            finally:
                await server.stop()

    return asyncio.run(run())


def test_acknowledged_delivery_is_evidence_with_custody_event_and_mqtt_message(station) -> None:
    code, made, err = _deliver(station, "--how", "station", "--how", "link", "--receipt", station["receipt"]["evidence_id"],
                               "--base-url", "http://station.invalid:8080")
    assert code == 0, err
    record = made["record"]
    assert record["outcome"] == "acknowledged" and record["document"]["sha256"] == station["document"]["sha256"]
    assert record["receipt"]["evidence_id"] == station["receipt"]["evidence_id"] and record["methods"] == ["link", "station"]
    assert made["link"].startswith(f"http://station.invalid:8080/delivery/{station['document']['evidence_id']}/")
    event = _custody(station["data_dir"], station["document"]["evidence_id"], "delivered")[-1]
    assert (event["delivery_evidence_id"], event["outcome"], event["party"]) == (made["evidence_id"], "acknowledged", "王小明")
    assert errors("custody-entry", event) == []
    message = _outbox(station["data_dir"], station["document"]["evidence_id"])[-1]
    assert errors("mqtt-delivery", message) == [], message
    assert message["deliveryEvidenceId"] == made["evidence_id"] and message["receiptEvidenceId"] == station["receipt"]["evidence_id"]
    code, out, _ = egw_here("ls", "--data-dir", station["data_dir"], "--json")
    kinds = {row["evidence_id"]: (row["kind"], row["state"]) for row in json.loads(out)}
    assert kinds[made["evidence_id"]] == ("document", "queued")  # it goes to the platform like all evidence


def test_refusal_needs_a_witness_and_is_recorded_as_a_delivery(station) -> None:
    code, _, err = _deliver(station, "--how", "paper", "--refused")
    assert code != 0 and "witness" in err and "Traceback" not in err
    code, made, err = _deliver(station, "--how", "paper", "--refused", "--witness", "赵六")
    assert code == 0, err
    assert made["record"]["outcome"] == "refused" and made["record"]["witness"] == {"name": "赵六"} and made["link"] is None
    message = _outbox(station["data_dir"], station["document"]["evidence_id"])[-1]
    assert errors("mqtt-delivery", message) == [] and message["witness"] == "赵六"
    # a receipt that is not a delivery receipt of this document is refused
    code, _, err = _deliver(station, "--how", "station", "--receipt", station["document"]["evidence_id"])
    assert code != 0 and "not a delivery receipt" in err
    # acknowledged without a receipt: refused
    code, _, err = _deliver(station, "--how", "station")
    assert code != 0 and "--receipt" in err


def test_one_time_link_opens_once_for_its_document_only_and_not_after_expiry(station) -> None:
    code, made, err = _deliver(station, "--how", "link", "--receipt", station["receipt"]["evidence_id"], "--base-url", "http://x")
    assert code == 0, err
    path = made["link"].removeprefix("http://x")
    token = path.rsplit("/", 1)[1]
    other = f"/delivery/{station['receipt']['evidence_id']}/{token}"  # the token, put on another document
    forged = path[:-4] + ("AAAA" if not path.endswith("AAAA") else "BBBB")
    (status_other, _), (status_forged, _), (first, body), (second, _) = _get_all(station["data_dir"], [other, forged, path, path])
    assert (status_other, status_forged) == (404, 404)
    assert first == 200 and hashlib.sha256(body).hexdigest() == station["document"]["sha256"]
    assert second == 410
    used = [e for e in _custody(station["data_dir"], station["document"]["evidence_id"], "delivery-link-used")
            if e["delivery_id"] == made["delivery_id"]]
    assert len(used) == 1 and used[0]["sha256"] == station["document"]["sha256"] and errors("custody-entry", used[0]) == []

    code, made, err = _deliver(station, "--how", "link", "--receipt", station["receipt"]["evidence_id"], "--base-url", "http://x")
    assert code == 0, err
    with sqlite3.connect(station["data_dir"] / "state.db") as db:  # the clock moves past the link's expiry
        db.execute("UPDATE delivery_links SET expires_at = ? WHERE delivery_id = ?", (time.time() - 1, made["delivery_id"]))
    [(expired, text)] = _get_all(station["data_dir"], [made["link"].removeprefix("http://x")])
    assert expired == 410 and "链接" in text.decode()  # the party reads Chinese


def test_the_document_is_shown_on_the_pad_screen_by_screen(station) -> None:
    """In-process pad model (the simulator's, through the STU codec): every view arrives as uploaded, and the
    first view is the top of the page pdftoppm renders; then the command against the real simulator process."""
    from gateway.workflows.pad_display import page_views, show_on_pad
    from simulators.signpad import STU540_CAPABILITY
    from tests.signpad_helpers import pad_and_model

    pdf = Path(station["document"]["path"])
    views = page_views(pdf, STU540_CAPABILITY.screen_width, STU540_CAPABILITY.screen_height)
    assert len(views) >= 2 and all(v.shape == (480, 800, 3) for v in views)
    assert (views[0] < 128).mean() > 0.01  # text, not a blank screen
    pad, model, clock = pad_and_model(None)
    assert show_on_pad(pad, pdf, dwell_s=0, sleep=clock.sleep) == len(views) and model.uploads == len(views)
    import numpy as np

    assert np.abs(model.uploaded_image.astype(int) - views[-1].astype(int)).mean() < 8

    (finger, _), (pad_proc, pad_url) = _simulators()
    try:
        code, made, err = _deliver(station, "--how", "pad", "--signpad", pad_url, "--pad-seconds", "0",
                                   "--receipt", station["receipt"]["evidence_id"])
    finally:
        _stop(pad_proc, finger)
    assert code == 0, err
    assert made["record"]["pad"]["views"] == len(views) and made["record"]["pad"]["sha256"] == station["document"]["sha256"]
    assert errors("mqtt-delivery", _outbox(station["data_dir"], station["document"]["evidence_id"])[-1]) == []
    code, _, err = _deliver(station, "--how", "pad", "--receipt", station["receipt"]["evidence_id"])
    assert code != 0 and "--signpad" in err
