"""Photos in: the ``StripReader`` pipeline over files and arrays, the JPEG quality gate, and the camera.

The steps themselves are in ``geometry`` (find, straighten, orient) and ``measure`` (the
window, the lines, the verdict); the pipeline and its limits are described in the package
docstring."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np

from .errors import StripCaptureError, StripImageError
from .geometry import as_bgr, find_window, orient_by_mark, refine, warp_window
from .judgement import StripReading, StripThresholds
from .measure import line_score, measure
from .profile import DEFAULT_PROFILE, CassetteProfile, load_profile


class StripReader:
    """Reads C, T and T/C from a photo of a test cassette (any rotation, uneven light).

    The profile describes the cassette (``profile.py``) and brings its thresholds; ``thresholds``
    overrides them. One reader may be shared: ``read`` keeps no state between calls.
    """

    def __init__(self, thresholds: StripThresholds | None = None, profile: CassetteProfile | None = None) -> None:
        self.profile = profile or load_profile(DEFAULT_PROFILE)
        self.thresholds = thresholds or self.profile.thresholds

    # -- public ---------------------------------------------------------------
    def read_file(self, path: str | Path) -> StripReading:
        """Read a photo file without modifying it; the reading records the file's SHA-256."""
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise StripImageError(f"cannot open photo {p}: {exc.strerror or exc}; check the path and permissions",
                                  reason="image") from exc
        buf = np.frombuffer(data, np.uint8)
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if image is None:
            raise StripImageError(
                f"{p} is not an image OpenCV can decode ({len(data)} bytes); take the photo again as JPEG or PNG"
            )
        quality = jpeg_quality_estimate(data)
        if quality is not None and quality < _MIN_JPEG_QUALITY:
            raise StripImageError(
                f"{p} is compressed too hard to measure line intensities (JPEG quality about {quality}); set the "
                "camera or app to high quality (90 or more) and re-take the photo", reason="compressed"
            )
        reading = self.read(image)
        notes = reading.notes
        if quality is not None and quality < 50:
            notes = notes + (f"JPEG quality about {quality}: compression adds error; use high quality next time",)
        return dataclasses.replace(reading, notes=notes, image_sha256=hashlib.sha256(data).hexdigest())

    def read(self, image: np.ndarray) -> StripReading:
        """Read one BGR (OpenCV order) 8-bit photo."""
        bgr = as_bgr(image)
        profile = self.profile
        geo = refine(bgr, find_window(bgr, profile), profile)
        if profile.orientation.cue == "mark":
            geo = orient_by_mark(bgr, geo, profile)
            body = warp_window(bgr, geo, profile)
        else:  # the line pattern is asymmetric: the end that fits it better is the sample end
            turned = geo.turned()
            body, other = warp_window(bgr, geo, profile), warp_window(bgr, turned, profile)
            if line_score(other, profile) > line_score(body, profile):
                geo, body = turned, other
        return measure(body, geo, profile, self.thresholds)


# Below this JPEG quality the block and chroma errors reach 0.04-0.05 in line
# intensity (simulated photos at quality 20-30); refuse rather than guess.
_MIN_JPEG_QUALITY = 40

# The IJG (libjpeg) luminance table at quality 50, the reference every common
# encoder scales; its sum lets us estimate the quality a photo was saved at.
_IJG_LUMA_SUM = sum((
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
))


def jpeg_quality_estimate(data: bytes) -> int | None:
    """The IJG-equivalent quality (1-100) of a JPEG's luminance table, or None if not a readable JPEG.

    Parses only the marker segments before the scan; never raises.
    """
    if len(data) < 4 or data[0:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no table seen
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            return None
        if marker == 0xDB:
            seg = data[pos + 4 : pos + 2 + length]
            i = 0
            while i < len(seg):
                precision, table_id = seg[i] >> 4, seg[i] & 0x0F
                size = 128 if precision else 64
                body = seg[i + 1 : i + 1 + size]
                if len(body) != size:
                    return None
                values = [int.from_bytes(body[k : k + 2], "big") for k in range(0, 128, 2)] if precision else list(body)
                if table_id == 0:
                    scale = 100.0 * sum(values) / _IJG_LUMA_SUM
                    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
                    return int(round(min(100.0, max(1.0, quality))))
                i += 1 + size
        pos += 2 + length
    return None


def capture_from(source: int | str | Path, *, warmup_frames: int = 0, timeout_s: float = 10.0) -> np.ndarray:
    """Grab one BGR frame from a camera index, a stream URL or a video/image file.

    ``warmup_frames`` frames are read and dropped first (webcams need a few to
    settle exposure). Opening and each read are bounded by ``timeout_s``
    (honoured by the FFmpeg and V4L2 back-ends) so an unreachable stream
    fails instead of hanging. The capture is always released.
    """
    target: int | str
    if isinstance(source, Path):
        target = str(source)
    elif isinstance(source, str) and source.isdigit():
        target = int(source)
    else:
        target = source
    looks_like_file = isinstance(target, str) and "://" not in target and "!" not in target  # not URL/pipeline
    if looks_like_file and not Path(str(target)).exists():
        raise StripCaptureError(f"video source {target} does not exist; check the file path or give a camera index")
    try:
        ms = max(1, int(timeout_s * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    except cv2.error as exc:
        raise StripCaptureError(f"OpenCV could not open video source {target!r}: {exc}; check the device or URL") from exc
    try:
        if not cap.isOpened():
            raise StripCaptureError(
                f"cannot open video source {target!r}; check that the camera is plugged in and not used by another "
                "program, or that the URL/file is right"
            )
        frame = None
        for _ in range(max(0, warmup_frames) + 1):
            ok, frame = cap.read()
            if not ok or frame is None:
                raise StripCaptureError(
                    f"video source {target!r} opened but gave no frame; check the camera connection or that the "
                    "file holds video"
                )
        assert frame is not None
        return np.ascontiguousarray(frame)
    except cv2.error as exc:
        raise StripCaptureError(f"reading a frame from {target!r} failed: {exc}; re-connect the camera") from exc
    finally:
        cap.release()
