"""Render time and size of an enforcement document (``egw record``'s PDF/A-3b), in process.

    python bench/record.py [--runs 20]

Renders the on-site inspection record of tests/test_documents.py (agency, six fields in Chinese, two
cited items with QR codes, the party's signature and fingerprint images, the signing record's items and a
draft embedded) ``--runs`` times into a temporary directory. The signature comes from the simulated pad
(王小明 written from Noto CJK outlines, captured through the real driver over an in-process USB loopback);
the fingerprint from the fingerprint simulator's image model. What is timed is ``render_document`` alone:
the store look-ups and the evidence ingest are the same as every other item's. Wall and CPU time are
both reported (on a loaded machine the wall time is mostly waiting for a core). The first run (which loads
and parses the CJK font collection once per process) is reported apart. Last line:
``record_render_p50_ms = X``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _signing_parts() -> object:
    import cv2

    from drivers.signpad import SignaturePad
    from firmware_bridge.usb import LoopbackUsbDevice
    from gateway.documents.sources import SigningParts
    from simulators.fingerprint.images import render_press
    from simulators.signpad import StuPadModel, name_script
    from tests.signpad_helpers import FakeClock

    clock = FakeClock()
    model = StuPadModel(name_script("王小明"), clock=clock)
    pad = SignaturePad(LoopbackUsbDevice(model, serial_number=model.serial), clock=clock, sleep=clock.sleep)
    capture = pad.capture(120, title="draft.pdf", signer="王小明")
    ok, finger = cv2.imencode(".png", render_press(3, 0.9))
    assert ok
    parts = {"signature.png": capture.png, "signature.iso19794-7": capture.iso_record, "fingerprint.png": finger.tobytes()}
    record = {"v": "egw.signing-record/1", "signer": {"name": "王小明", "role": "party"}, "started_at": "2026-12-06T09:40:00+00:00",
              "document": {"sha256": "0" * 64},
              "items": {name: {"sha256": hashlib.sha256(data).hexdigest(), "evidence_id": f"bench-{name}"} for name, data in parts.items()}}
    return SigningParts("bench-signing-record", record, json.dumps(record).encode(), parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    import tomllib

    from gateway.documents.form import check_form
    from gateway.documents.render import render_document
    from gateway.documents.sources import Citation
    from gateway.documents.templates import load_template
    from tests.test_documents import FORM

    template = load_template("onsite")
    form = check_form(template, tomllib.loads(FORM))
    citations = [Citation("01a24a7c-54d8-79f7-9ec6-dfdc3466cc60", "photo", "image/jpeg", "IMG_0001.jpg", "9f" * 32, 123_456, "rcpt-1", None),
                 Citation("01a24a7c-5c46-7c75-b75e-683857f4c83f", "result", "application/json", "result.json", "ab" * 32, 80, None,
                          b'{"assay": "aflatoxin B1", "result": "negative"}')]
    signing = _signing_parts()
    draft = b"%PDF-1.7 stand-in for the signed draft\n" * 200
    times, cpu_times, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs + 1):
            out = Path(tmp) / f"record-{run}.pdf"
            start, cpu_start = time.perf_counter(), time.process_time()
            render_document(template, form, out, document_id=f"bench-{run}", citations=citations, signing=signing,  # type: ignore[arg-type]
                            signed_draft=draft, language="zh_CN")
            elapsed = (time.perf_counter() - start) * 1000
            cpu = (time.process_time() - cpu_start) * 1000
            if run == 0:
                print(f"first render (font collection parsed): {elapsed:.0f} ms, {out.stat().st_size} bytes")
                continue
            times.append(elapsed)
            cpu_times.append(cpu)
            sizes.append(out.stat().st_size)
    times.sort()
    print(f"renders: {len(times)}; p50 {statistics.median(times):.0f} ms, p90 {times[int(0.9 * (len(times) - 1))]:.0f} ms, "
          f"max {times[-1]:.0f} ms; CPU p50 {statistics.median(cpu_times):.0f} ms (the wall time on a shared machine); size {statistics.median(sizes) / 1000:.1f} kB (embedded draft stand-in {len(draft) / 1000:.1f} kB)")
    print(f"record_render_p50_ms = {statistics.median(times):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
