"""Screen images for an STU pad: OpenCV BGR arrays to and from the pad's encodings, and HID image blocks."""

from __future__ import annotations

import numpy as np

from firmware_bridge.errors import LengthError, LocalProtocolError, UnknownCodeError
from firmware_bridge.stu_hid.constants import ENCODING_MODE_1BIT, ENCODING_MODE_16BIT, ENCODING_MODE_24BIT, IMAGE_BLOCK_DATA_SIZE
from firmware_bridge.stu_hid.feature import ImageDataBlock


def image_size(mode: int, width: int, height: int) -> int:
    """Bytes of a full-screen image in an encoding mode (bulk flag ignored)."""
    base = mode & ~0x10
    if base == ENCODING_MODE_24BIT:
        return width * height * 3
    if base == ENCODING_MODE_16BIT:
        return width * height * 2
    if base == ENCODING_MODE_1BIT:
        return (width + 7) // 8 * height
    raise UnknownCodeError(f"image encoding mode 0x{mode:02x} is not supported (0x00 1-bit, 0x02 16-bit, 0x04 24-bit)")


def flatten_image(bgr: np.ndarray, mode: int) -> bytes:
    """An OpenCV BGR image (H×W×3 uint8) → the bytes a pad expects for ``mode``."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise LocalProtocolError(f"expected an H×W×3 uint8 BGR image, got shape {bgr.shape} {bgr.dtype}")
    base = mode & ~0x10
    if base == ENCODING_MODE_24BIT:
        return np.ascontiguousarray(bgr).tobytes()
    if base == ENCODING_MODE_16BIT:
        b = bgr[:, :, 0].astype(np.uint16)
        g = bgr[:, :, 1].astype(np.uint16)
        r = bgr[:, :, 2].astype(np.uint16)
        rgb565 = (r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)
        return rgb565.astype(">u2").tobytes()
    if base == ENCODING_MODE_1BIT:
        gray = bgr.astype(np.uint16).sum(axis=2) // 3
        white = gray >= 128
        return np.packbits(white, axis=1).tobytes()
    raise LocalProtocolError(f"image encoding mode 0x{mode:02x} is not supported by flatten_image")


def unflatten_image(data: bytes, mode: int, width: int, height: int) -> np.ndarray:
    """Pad image bytes → an H×W×3 uint8 BGR image. Raises LengthError if the size is wrong."""
    want = image_size(mode, width, height)
    if len(data) != want:
        raise LengthError(f"a {width}×{height} image in mode 0x{mode:02x} is {want} bytes, got {len(data)}")
    base = mode & ~0x10
    if base == ENCODING_MODE_24BIT:
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    if base == ENCODING_MODE_16BIT:
        v = np.frombuffer(data, dtype=">u2").reshape(height, width).astype(np.uint16)
        r = ((v >> 11) & 0x1F) * 255 // 31
        g = ((v >> 5) & 0x3F) * 255 // 63
        b = (v & 0x1F) * 255 // 31
        return np.stack([b, g, r], axis=2).astype(np.uint8)
    packed = np.frombuffer(data, dtype=np.uint8).reshape(height, (width + 7) // 8)
    white = np.unpackbits(packed, axis=1)[:, :width].astype(np.uint8) * 255
    return np.repeat(white[:, :, None], 3, axis=2)


def image_blocks(data: bytes) -> list[ImageDataBlock]:
    """Split image bytes into HID ImageDataBlocks of 253 bytes (the last one shorter)."""
    return [ImageDataBlock(bytes(data[i:i + IMAGE_BLOCK_DATA_SIZE]))
            for i in range(0, len(data), IMAGE_BLOCK_DATA_SIZE)]
