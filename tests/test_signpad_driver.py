"""SignaturePad driver against the simulated STU-540 in-process, on a shared fake clock."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from drivers.signpad import (
    SAMPLE_DTYPE, SignaturePad, SignPadError, SignPadProtocolError, SignPadTimeout, SignPadUnplugged,
    button_layout, render_prompt,
)
from firmware_bridge import stu_hid as stu
from firmware_bridge.iso19794_7 import decode_record
from firmware_bridge.errors import TransportClosed, TransportTimeout, UsbError, UsbStall
from firmware_bridge.usb import LoopbackUsbDevice
from simulators.signpad import STU540_CAPABILITY, StuPadModel, name_script
from tests.signpad_helpers import FakeClock, pad_and_model


def _assert_no_ink_in_buttons(pad, capture):
    caps = capture.capability
    px = capture.samples["x"] * caps.screen_width / caps.tablet_max_x
    py = capture.samples["y"] * caps.screen_height / caps.tablet_max_y
    top = min(r[1] for r in pad.buttons().values())
    assert (py < top).all(), "button taps leaked into the signature"
    assert px.min() > 0


def test_full_signature_then_ok():
    pad, model, clock = pad_and_model(name_script("Jane Doe"))
    t0 = clock.now
    capture = pad.capture(60, title="Notice 2026-0042", signer="Jane Doe")
    samples = capture.samples
    assert samples.dtype == SAMPLE_DTYPE and len(samples) > 300
    assert capture.timestamps == "pad" and capture.clears == 0
    dt = np.diff(samples["t_ms"])
    assert samples["t_ms"][0] == 0 and (dt >= 0).all() and np.median(dt) == 5.0  # 200 reports/s
    assert 1.0 < capture.duration_ms / 1000 < clock.now - t0  # pad time within the session
    assert capture.stroke_count >= 5  # one per glyph blob of "Jane Doe"
    assert samples["pressure"].max() <= 1023 and (samples["pressure"] > 0).sum() > 200
    _assert_no_ink_in_buttons(pad, capture)
    ident = capture.identity
    assert (ident.vendor_id, ident.product_id, ident.model_name) == (0x056A, 0x00A8, "STU-540")
    assert ident.uid2 == model.uid2 and ident.serial_number == model.serial and ident.firmware == "1.04"
    assert ident.digitizer_info == f"STU;'STU-540';1.04;{model.uid2}"
    # the pad was left tidy: inking off, screen blank
    assert not model.inking and (model.screen == 255).all()
    assert model.uploads == 1 and not model.signer_problems
    meta = capture.metadata()
    json.dumps(meta)  # JSON-ready
    assert meta["device"]["uid2"] == model.uid2 and meta["samples"] == len(samples)
    assert meta["title"] == "Notice 2026-0042" and meta["signer"] == "Jane Doe" and meta["timestamps"] == "pad"
    assert capture.started_at <= capture.finished_at


def test_iso_record_of_a_capture():
    pad, _, _ = pad_and_model(name_script("Al"))
    capture = pad.capture(60)
    record = capture.iso_record
    assert record[:13] == bytes.fromhex("53444900 20313000 C140 E0 B480")
    n = len(capture.samples)
    assert int.from_bytes(record[33:37], "big") == n and len(record) == 37 + 8 * n
    first = record[37:45]
    assert int.from_bytes(first[0:2], "big") == int(capture.samples["x"][0]) + 32768
    assert int.from_bytes(first[4:6], "big") == 0  # T starts at 0
    last_t = int.from_bytes(record[-4:-2], "big")
    assert last_t == round(capture.duration_ms * 10)  # 10000 units per second
    decoded = decode_record(record)
    assert [v - 32768 for v in decoded.column("X")] == capture.samples["x"].tolist()
    assert [v - 32768 for v in decoded.column("Y")] == capture.samples["y"].tolist()
    assert decoded.column("F") == capture.samples["pressure"].tolist()
    assert decoded.channels[0].scaling == 100.0  # 2540 lpi


def test_rendered_png_has_ink_and_width_from_pressure():
    pad, _, _ = pad_and_model(name_script("Jane Doe"))
    capture = pad.capture(60)
    img = cv2.imdecode(np.frombuffer(capture.png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img is not None and img.shape[0] > 40 and img.shape[1] > 200
    dark = (img < 128).mean()
    assert 0.01 < dark < 0.6
    light = capture.samples.copy()
    light["pressure"] = np.where(light["pressure"] > 0, 1, 0)
    from drivers.signpad import render_signature_png
    thin = cv2.imdecode(np.frombuffer(render_signature_png(light, capture.capability), np.uint8), 0)
    assert (thin < 128).sum() < (img < 128).sum()  # low pressure draws thinner lines


def test_uploaded_screen_shows_the_buttons():
    pad, model, _ = pad_and_model(name_script("Jane Doe"))
    pad.capture(60, title="Notice 2026-0042", signer="Jane Doe")
    screen = model.uploaded_image
    assert screen.shape == (480, 800, 3)
    gray = cv2.cvtColor(screen, cv2.COLOR_BGR2GRAY)
    for name, (x0, y0, x1, y1) in pad.buttons().items():
        region = gray[y0:y1, x0:x1]
        assert (region < 250).mean() > 0.9, f"{name} button is not drawn"
        assert (region < 100).any(), f"{name} button has no border or label"
    assert (gray[5:30, :] < 128).any()  # the title
    assert (gray[150:300, 100:700] > 250).all()  # the signing area is empty


def test_clear_then_sign():
    pad, model, _ = pad_and_model(name_script("Jane Doe", clear_first=True))
    capture = pad.capture(60)
    assert capture.clears == 1 and model.uploads == 2
    single, _, _ = pad_and_model(name_script("Jane Doe"))
    reference = single.capture(60)
    # only the second attempt is kept: same length as a single signature
    assert len(capture.samples) == len(reference.samples)
    assert np.array_equal(capture.samples[["x", "y", "pressure"]], reference.samples[["x", "y", "pressure"]])


def test_button_decided_where_the_pen_lifts_and_ok_needs_ink():
    layout = button_layout(800, 480)
    cx = lambda r: (r[0] + r[2]) / 2  # noqa: E731
    cancel, ok = layout["cancel"], layout["ok"]
    script = [
        {"tap": "ok"},  # OK with no ink yet: ignored
        # pen down on Cancel, dragged up into the signing area, lifted there: not a press
        {"strokes": [{"points": [[cx(cancel), cancel[1] + 20, 0.5], [cx(cancel), 200, 0.5]], "duration_ms": 300}]},
        {"strokes": [{"points": [[100, 200, 0.3], [400, 250, 0.9], [600, 180, 0.6]], "duration_ms": 800}]},
        {"tap": "ok"},
    ]
    pad, model, _ = pad_and_model(script)
    capture = pad.capture(60)
    touching = capture.samples[capture.samples["pressure"] > 0]
    # the drag that started on Cancel is not ink; the explicit stroke is (800 ms = 160 samples)
    assert capture.stroke_count == 1 and 155 <= len(touching) <= 162
    assert round(0.85 * 1023) <= touching["pressure"].max() <= round(0.9 * 1023)
    assert ok  # layout sanity


def test_one_bit_pad_gets_a_one_bit_screen():
    caps = stu.Capability(9600, 6000, 1023, 320, 200, 200, 2540, stu.ENCODING_FLAG_1BIT)
    pad, model, _ = pad_and_model(name_script("Jo"), capability=caps, model_name="STU-430")
    assert pad.encoding_mode() == stu.ENCODING_MODE_1BIT
    pad.show_prompt("Notice", "Jo")
    assert model.uploaded_image.shape == (200, 320, 3)
    assert set(np.unique(model.uploaded_image)) <= {0, 255}


def test_sixteen_bit_pad_and_signature_still_works():
    caps = stu.Capability(10800, 6480, 1023, 800, 480, 200, 2540, stu.ENCODING_FLAG_16BIT | stu.ENCODING_FLAG_1BIT)
    pad, model, _ = pad_and_model(name_script("Jane Doe"), capability=caps)
    assert pad.encoding_mode() == stu.ENCODING_MODE_16BIT
    assert len(pad.capture(60).samples) > 300


class NoTimeCountPad(StuPadModel):
    """A pad without PenDataOptionMode (like an STU-500): plain 0x01 reports."""

    def _set_feature(self, raw: bytes) -> None:
        if raw[0] == stu.REPORT_PEN_DATA_OPTION_MODE and raw[1] != 0:
            raise UsbStall("PenDataOptionMode not supported")
        super()._set_feature(raw)


def test_host_timestamps_when_the_pad_has_no_time_count():
    clock = FakeClock()
    model = NoTimeCountPad(name_script("Jane Doe"), clock=clock)
    pad = SignaturePad(LoopbackUsbDevice(model), clock=clock, sleep=clock.sleep)
    capture = pad.capture(60)
    assert capture.timestamps == "host" and len(capture.samples) > 300
    assert np.median(np.diff(capture.samples["t_ms"])) == pytest.approx(5.0, abs=1.0)


def test_not_an_stu_pad_is_refused():
    class Blank(StuPadModel):
        def _get_feature(self, report_id: int) -> bytes:
            if report_id == stu.REPORT_CAPABILITY:
                return stu.Capability(0, 0, 0, 0, 0, 0, 0, 0).encode()
            return super()._get_feature(report_id)

    with pytest.raises(SignPadProtocolError, match="capability"):
        SignaturePad(LoopbackUsbDevice(Blank()))


def test_open_bad_url_is_a_signpad_error():
    with pytest.raises(SignPadError):
        SignaturePad.open("usbip://127.0.0.1:1/1-1")


def test_prompt_renders_any_size_and_non_ascii():
    img = render_prompt(396, 100, "Ordonnance n° 42 — très longue " * 3, "Zoë")
    assert img.shape == (100, 396, 3) and (img < 128).any()
    assert STU540_CAPABILITY.screen_width == 800


def test_repeating_signer_serves_consecutive_sessions():
    pad, model, _ = pad_and_model(name_script("Jane Doe", clear_first=True), repeat=True)
    first = pad.capture(60)
    second = pad.capture(60)
    assert first.clears == second.clears == 1 and model.uploads == 4
    assert len(first.samples) == len(second.samples)


class GarbagePad(StuPadModel):
    """Sends whatever the test gives it on the interrupt endpoint, once the prompt is up."""

    def __init__(self, reports: list[bytes], **kwargs) -> None:
        super().__init__(None, **kwargs)
        self.garbage = list(reports)

    def interrupt_in(self, endpoint: int, length: int) -> bytes | None:
        if self.uploads and self.garbage:
            return self.garbage.pop(0)
        return None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=16),
                          st.tuples(st.sampled_from([0x01, 0x34]), st.binary(min_size=6, max_size=10)).map(
                              lambda a: bytes([a[0]]) + a[1])), max_size=30))
def test_any_pen_bytes_end_in_a_signpad_error(reports):
    clock = FakeClock()
    small = stu.Capability(9600, 6000, 1023, 320, 200, 200, 2540, stu.ENCODING_FLAG_1BIT)  # tiny uploads
    model = GarbagePad(reports, clock=clock, capability=small)
    pad = SignaturePad(LoopbackUsbDevice(model), clock=clock, sleep=clock.sleep)
    try:
        capture = pad.capture(1)
    except SignPadError:
        return
    assert len(capture.samples) > 0  # random bytes that happen to sign and tap OK are a signature


class FlakyLink(LoopbackUsbDevice):
    """A link that fails control transfers with a given transport error."""

    def __init__(self, model, error):
        super().__init__(model)
        self.error = error

    def ctrl_transfer(self, *args, **kwargs):
        raise self.error


@pytest.mark.parametrize("error,expected", [
    (TransportTimeout("no answer in 1000 ms"), SignPadTimeout),
    (TransportClosed("device gone"), SignPadUnplugged),
    (UsbError("status -71 (EPROTO)"), SignPadUnplugged),
    (UsbStall("stalled"), SignPadProtocolError),
])
def test_link_failures_map_to_the_driver_tree(error, expected):
    with pytest.raises(expected) as info:
        SignaturePad(FlakyLink(StuPadModel(), error))
    assert info.value.__cause__ is error


def test_pause_longer_than_the_time_count_wrap_keeps_true_time():
    # the signer writes a stroke, walks away for 70 s (pen out of range), writes another, taps OK
    stroke = lambda y: {"strokes": [{"points": [[100, y, 0.5], [500, y, 0.5]], "duration_ms": 500}]}  # noqa: E731
    pad, _, _ = pad_and_model([stroke(150), {"pause_ms": 70000}, stroke(250), {"tap": "ok"}])
    capture = pad.capture(120)
    t = capture.samples["t_ms"]
    gap = np.diff(t).max()
    assert 70000 < gap < 71000  # not 70000 - 65536
    assert 70500 < capture.duration_ms < 72000
    decoded = decode_record(capture.iso_record)
    assert decoded.channels[2].scaling == pytest.approx(100.0)  # T coarsened to 1/100 s for a 71 s record
    assert decoded.column("T")[-1] == round(capture.duration_ms / 10)
