"""The STU-540 simulator model: USB descriptors, feature reports, timing, screen, faults."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import stu_hid as stu
from firmware_bridge.errors import TransportClosed, UsbError, UsbStall
from firmware_bridge.usb import LoopbackUsbDevice, UsbDeviceModel
from simulators.signpad import STU540_CAPABILITY, StuPadModel, SignerScriptError, detect_buttons, load_script
from simulators.signpad.model import report_descriptor
from tests.signpad_helpers import FakeClock


def _device(script=None, **kwargs):
    clock = FakeClock()
    model = StuPadModel(script, clock=clock, **kwargs)
    return LoopbackUsbDevice(model), model, clock


def _get(dev, report_id):
    return dev.ctrl_transfer(0xA1, 0x01, 0x0300 | report_id, 0, stu.REPORT_SIZES[report_id])


def _set(dev, report):
    raw = report.encode()
    return dev.ctrl_transfer(0x21, 0x09, 0x0300 | raw[0], 0, raw)


def _upload(dev, image, mode=stu.ENCODING_MODE_24BIT):
    _set(dev, stu.StartImageData(mode))
    for block in stu.image_blocks(stu.flatten_image(image, mode)):
        _set(dev, block)
    _set(dev, stu.EndImageData(0))


def _three_buttons(order=("OK", "Clear", "Cancel")):
    img = np.full((480, 800, 3), 255, np.uint8)
    for i, label in enumerate(order):
        x0 = 20 + i * 260
        cv2.rectangle(img, (x0, 400), (x0 + 240, 460), (0, 0, 0), 2)
        cv2.putText(img, label, (x0 + 60, 440), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (0, 0, 0), 2)
    return img


def test_is_a_usb_device_model_with_stu540_ids_and_hid_interface():
    dev, model, _ = _device()
    assert isinstance(model, UsbDeviceModel)
    desc = dev.ctrl_transfer(0x80, 6, 0x0100, 0, 18)
    assert desc[8:12] == bytes.fromhex("6A05A800")  # VID 0x056A, PID 0x00A8 little-endian
    assert model.interfaces() == [(3, 0, 0)]
    config = dev.ctrl_transfer(0x80, 6, 0x0200, 0, 255)
    hid = config[18:27]
    rd = report_descriptor()
    assert hid == bytes([9, 0x21, 0x11, 0x01, 0, 1, 0x22]) + struct.pack("<H", len(rd))
    assert config[27:34] == bytes([7, 5, 0x81, 3, 64, 0, 1])  # interrupt IN 0x81
    assert dev.ctrl_transfer(0x81, 6, 0x2200, 0, 1024) == rd
    # pen data 0x01 declared as a 6-byte input, the image block as a 255-byte feature
    assert bytes.fromhex("85 01 09 01 95 06 81 02") in rd
    assert bytes.fromhex("85 26 09 26 95 FF B1 02") in rd
    assert bytes.fromhex("85 34 09 34 95 0A 81 02") in rd


def test_feature_reports_read_back():
    dev, model, _ = _device(uid2="5ABC123456")
    assert _get(dev, stu.REPORT_CAPABILITY) == STU540_CAPABILITY.encode()
    assert stu.Information.decode(_get(dev, stu.REPORT_INFORMATION)).model_name == "STU-540"
    assert stu.Uid2.decode(_get(dev, stu.REPORT_UID2)).uid2 == "5ABC123456"
    assert _get(dev, stu.REPORT_STATUS) == bytes.fromhex("03 00 00 00 00")
    _set(dev, stu.PenDataOptionMode(3))
    _set(dev, stu.InkingMode(1))
    assert _get(dev, stu.REPORT_PEN_DATA_OPTION_MODE) == b"\x32\x03"
    assert _get(dev, stu.REPORT_INKING_MODE) == b"\x21\x01"
    _set(dev, stu.StartCapture(7))
    assert model.capture_session == 7
    _set(dev, stu.Reset(0))
    assert model.option_mode == 0 and not model.inking


def test_bad_requests_stall_and_set_last_result():
    dev, model, _ = _device()
    with pytest.raises(UsbStall):
        dev.ctrl_transfer(0xA1, 0x01, 0x0377, 0, 8)
    with pytest.raises(UsbStall):
        dev.ctrl_transfer(0x21, 0x09, 0x0321, 0, b"\x20\x01")  # data id does not match wValue
    assert stu.Status.decode(_get(dev, stu.REPORT_STATUS)).last_result_code == stu.RESULT_WRONG_REPORT_ID
    with pytest.raises(UsbStall):
        _set(dev, stu.ImageDataBlock(b"x"))  # no StartImageData
    assert stu.Status.decode(_get(dev, stu.REPORT_STATUS)).last_result_code == stu.RESULT_WRONG_STATE
    with pytest.raises(UsbStall):
        dev.ctrl_transfer(0x21, 0x09, 0x0325, 0, b"\x25\x01")  # zlib not offered by this pad
    with pytest.raises(UsbStall):
        dev.ctrl_transfer(0x21, 0x09, 0x0121, 0, b"\x21\x01")  # output/input report type
    with pytest.raises(UsbStall):
        dev.read(0x82, 64)


@pytest.mark.parametrize("mode", [stu.ENCODING_MODE_24BIT, stu.ENCODING_MODE_16BIT, stu.ENCODING_MODE_1BIT])
def test_uploaded_image_is_kept_decoded(mode):
    dev, model, _ = _device()
    image = _three_buttons()
    image[100:200, 100:300] = (200, 40, 10)
    _upload(dev, image, mode)
    assert model.uploads == 1 and model.uploaded_image is not None
    if mode == stu.ENCODING_MODE_24BIT:
        assert np.array_equal(model.uploaded_image, image)
    elif mode == stu.ENCODING_MODE_16BIT:
        assert np.abs(model.uploaded_image.astype(int) - image).max() <= 8
    else:
        assert model.uploaded_image[150, 200].tolist() == [0, 0, 0]  # dark patch stays dark
        assert model.uploaded_image[300, 400].tolist() == [255, 255, 255]
    assert _get(dev, stu.REPORT_STATUS)[1] == stu.STATUS_READY


def test_image_too_long_or_short_is_refused():
    dev, model, _ = _device()
    _set(dev, stu.StartImageData(stu.ENCODING_MODE_1BIT))
    size = stu.image_size(0, 800, 480)
    for block in stu.image_blocks(bytes(size)):
        _set(dev, block)
    with pytest.raises(UsbStall):
        _set(dev, stu.ImageDataBlock(b"\x00"))
    _set(dev, stu.EndImageData(1))  # abandon
    _set(dev, stu.StartImageData(stu.ENCODING_MODE_1BIT))
    _set(dev, stu.ImageDataBlock(b"\x00" * 10))
    with pytest.raises(UsbStall):
        _set(dev, stu.EndImageData(0))
    assert model.uploads == 0


def test_pen_reports_at_200_per_second_with_time_count():
    strokes = {"strokes": [{"points": [[100, 100, 0.5], [300, 200, 0.5]], "duration_ms": 1000}]}
    dev, model, clock = _device([strokes], reaction_s=0.1)
    _set(dev, stu.PenDataOptionMode(3))
    with pytest.raises(UsbError):
        dev.read(0x81, 64)  # nothing before a screen is shown
    _upload(dev, _three_buttons())
    with pytest.raises(UsbError):
        dev.read(0x81, 64)  # the signer needs a moment to react
    clock.sleep(0.1)
    reports = []
    start = clock.now
    while clock.now - start < 1.0:
        try:
            reports.append(stu.decode_input_report(dev.read(0x81, 64)))
        except UsbError:
            clock.sleep(0.001)
    # 200 reports/s: one second holds 200 slots (8 hover slots, then the stroke)
    assert 195 <= len(reports) <= 201
    assert all(isinstance(r, stu.PenDataTimeCountSequence) for r in reports)
    deltas = {(b.time_count - a.time_count) & 0xFFFF for a, b in zip(reports, reports[1:])}
    assert deltas == {5}
    assert [r.sequence for r in reports] == list(range(reports[0].sequence, reports[0].sequence + len(reports)))
    touching = [r for r in reports if r.touching]
    assert touching and all(r.pressure == round(0.5 * 1023) for r in touching)
    assert touching[0].x == round(100 * 10800 / 800) and touching[0].y == round(100 * 6480 / 480)


def test_late_poll_gets_a_burst_with_scheduled_times():
    strokes = {"strokes": [{"points": [[100, 100, 0.5], [300, 200, 0.5]], "duration_ms": 500}]}
    dev, model, clock = _device([strokes], reaction_s=0.0)
    _set(dev, stu.PenDataOptionMode(3))
    _upload(dev, _three_buttons())
    clock.sleep(0.2)  # the host was busy for 200 ms
    burst = []
    while True:
        try:
            burst.append(stu.decode_input_report(dev.read(0x81, 64)))
        except UsbError:
            break
    assert len(burst) == 41  # slots due at 0, 5, …, 200 ms
    assert (burst[-1].time_count - burst[0].time_count) & 0xFFFF == 200


def test_plain_pen_data_when_option_mode_is_zero_and_ink_drawn_when_inking():
    strokes = {"strokes": [{"points": [[100, 100, 0.8], [500, 300, 0.8]], "duration_ms": 300}]}
    dev, model, clock = _device([strokes], reaction_s=0.0)
    _upload(dev, _three_buttons())
    _set(dev, stu.InkingMode(1))
    kinds = set()
    for _ in range(400):
        try:
            kinds.add(type(stu.decode_input_report(dev.read(0x81, 64))))
        except UsbError:
            clock.sleep(0.005)
    assert kinds == {stu.PenData}
    assert model.signer_done
    assert (model.screen[100:300, 100:500] < 200).any()  # ink on the LCD
    assert (model.uploaded_image[100:300, 100:500] == 255).all()  # the upload itself stays clean


def test_unplug_makes_the_device_vanish_and_calls_back():
    dev, model, clock = _device([{"sign": "Al", "fraction": 0.2}, {"unplug": True}], reaction_s=0.0)
    dropped = []
    model.on_unplug.append(lambda: dropped.append(True))
    _upload(dev, _three_buttons())
    with pytest.raises(TransportClosed):
        for _ in range(10000):
            try:
                dev.read(0x81, 64)
            except UsbError:
                clock.sleep(0.005)
    assert dropped == [True] and model.unplugged
    with pytest.raises(TransportClosed):
        _get(dev, stu.REPORT_STATUS)


def test_buttons_found_by_label_width_not_position():
    found = detect_buttons(_three_buttons(("Cancel", "OK", "Clear")))
    assert set(found) == {"ok", "clear", "cancel"}
    assert found["cancel"][0] < found["ok"][0] < found["clear"][0]
    assert detect_buttons(np.full((480, 800, 3), 255, np.uint8)) == {}


def test_missing_button_is_reported_not_crashed():
    dev, model, clock = _device([{"tap": "ok"}])
    _upload(dev, np.full((480, 800, 3), 255, np.uint8))
    assert model.signer_problems and "ok" in model.signer_problems[0]


def test_script_loading(tmp_path):
    assert load_script("Jane Doe") == [{"sign": "Jane Doe"}, {"tap": "ok"}]
    steps = [{"strokes": [{"points": [[1, 2, 0.5]], "duration_ms": 50}]}, {"pause_ms": 100}, {"tap": "cancel"}]
    assert load_script(json.dumps({"steps": steps})) == steps
    path = tmp_path / "signer.json"
    path.write_text(json.dumps(steps))
    assert load_script(str(path)) == steps
    for bad in ['[{"tap": "maybe"}]', '[{"strokes": [{"points": [[1, 2]]}]}]', '{"steps": 3}', "[1]", "{nope",
                '[{"sign": "A", "fraction": 2}]', str(tmp_path / "missing.json"), "   "]:
        with pytest.raises(SignerScriptError):
            load_script(bad)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_any_control_transfer_answers_or_stalls(request_type, request, value, data):
    dev, model, _ = _device()
    try:
        if request_type & 0x80:
            dev.ctrl_transfer(request_type, request, value, 0, 64)
        else:
            dev.ctrl_transfer(request_type, request, value, 0, data)
    except UsbStall:
        pass
