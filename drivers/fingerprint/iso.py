"""ISO/IEC 19794-4:2005 finger image records: written for interchange, read back to check them.

The layout is spelt out in ``iso_19794_4_record``; ``parse_iso_19794_4`` reads only
what that function writes (one view), which is what the tests and the CLI need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from .errors import ImageEncodingError
from .image import encode_png

SENSOR_PPI: Final = 500  # R307/ZFM optical sensors: about 500 dpi
_ISO_COMPRESSION = {"raw": 0, "png": 5}


def iso_19794_4_record(
    image: npt.NDArray[np.uint8],
    *,
    quality: int | None = None,
    finger_position: int = 0,
    resolution_ppi: int = SENSOR_PPI,
    compression: str = "raw",
    capture_device_id: int = 0,
    acquisition_level: int = 31,
    impression_type: int = 0,
) -> bytes:
    """An ISO/IEC 19794-4:2005 finger image record holding one view.

    Layout (protocol file §6; all integers big-endian)::

        General header, 32 bytes
          "FIR\\0" · "010\\0" · record length (6) · capture device id (2) ·
          image acquisition level (2) · number of fingers (1) · scale units (1, 1 = ppi) ·
          horizontal/vertical scan resolution (2+2) · horizontal/vertical image resolution (2+2) ·
          pixel depth in bits (1) · compression (1: 0 raw, 5 PNG) · reserved (2)
        Finger view header, 14 bytes
          view data length (4, header + image) · finger position (1, 0 unknown,
          1–5 right thumb→little, 6–10 left) · view count (1) · view number (1) ·
          quality (1, 0..100; 254 = not computed) · impression type (1, 0 live-scan plain) ·
          width (2) · height (2) · reserved (1)
        Image data: raw 8-bit grey rows top to bottom, or a PNG stream

    Why 8-bit although the sensor sends 4 bits: the upsampled ×17 grey is what
    every viewer and matcher expects; the record says 8 bits honestly.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ImageEncodingError(f"an ISO finger image must be 2-D uint8, got {img.dtype} {img.shape}")
    if compression not in _ISO_COMPRESSION:
        raise ImageEncodingError(f"compression {compression!r} is not supported; use 'raw' or 'png'")
    if not 0 <= finger_position <= 10:
        raise ImageEncodingError(f"finger position {finger_position} is not 0 (unknown) .. 10")
    height, width = img.shape
    if width > 0xFFFF or height > 0xFFFF:
        raise ImageEncodingError(f"image {width}x{height} is too large for a 16-bit size field")
    for name, value in (("capture_device_id", capture_device_id), ("acquisition_level", acquisition_level),
                        ("resolution_ppi", resolution_ppi)):
        if not 0 <= value <= 0xFFFF:
            raise ImageEncodingError(f"{name} {value} does not fit the record's 16-bit field")
    if not 0 <= impression_type <= 0xFF:
        raise ImageEncodingError(f"impression type {impression_type} does not fit in one byte")
    q = 254 if quality is None else max(0, min(100, int(quality)))
    data = img.tobytes() if compression == "raw" else encode_png(img)
    view_len = 14 + len(data)
    total = 32 + view_len
    header = (
        b"FIR\0" + b"010\0" + total.to_bytes(6, "big")
        + capture_device_id.to_bytes(2, "big") + acquisition_level.to_bytes(2, "big")
        + bytes([1, 1])
        + resolution_ppi.to_bytes(2, "big") * 4
        + bytes([8, _ISO_COMPRESSION[compression]]) + bytes(2)
    )
    view = (
        view_len.to_bytes(4, "big") + bytes([finger_position, 1, 1, q, impression_type])
        + width.to_bytes(2, "big") + height.to_bytes(2, "big") + bytes(1)
    )
    return bytes(header + view + data)


@dataclass(frozen=True)
class IsoFingerImage:
    """What :func:`parse_iso_19794_4` read back from a record (first view only)."""

    record_length: int
    capture_device_id: int
    resolution_ppi: int
    pixel_depth: int
    compression: int
    finger_position: int
    quality: int
    impression_type: int
    width: int
    height: int
    image: npt.NDArray[np.uint8]


def parse_iso_19794_4(record: bytes) -> IsoFingerImage:
    """Read back an ISO/IEC 19794-4:2005 record written by :func:`iso_19794_4_record`."""
    if len(record) < 46 or record[:4] != b"FIR\0" or record[4:8] != b"010\0":
        raise ImageEncodingError("not an ISO/IEC 19794-4:2005 finger image record (FIR\\0 010\\0 header)")
    total = int.from_bytes(record[8:14], "big")
    if total != len(record):
        raise ImageEncodingError(f"record length field says {total} bytes, the record has {len(record)}")
    view_len = int.from_bytes(record[32:36], "big")
    width, height = int.from_bytes(record[41:43], "big"), int.from_bytes(record[43:45], "big")
    compression = record[29]
    data = record[46:32 + view_len]
    if compression == 0:
        if len(data) != width * height:
            raise ImageEncodingError(f"raw image is {len(data)} bytes, {width}x{height} needs {width * height}")
        image = np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()
    elif compression == 5:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise ImageEncodingError("the record's PNG stream does not decode")
        image = np.asarray(decoded, dtype=np.uint8)
    else:
        raise ImageEncodingError(f"compression {compression} is not raw (0) or PNG (5)")
    return IsoFingerImage(
        record_length=total,
        capture_device_id=int.from_bytes(record[14:16], "big"),
        resolution_ppi=int.from_bytes(record[20:22], "big"),
        pixel_depth=record[28],
        compression=compression,
        finger_position=record[36],
        quality=record[39],
        impression_type=record[40],
        width=width,
        height=height,
        image=image,
    )
