"""Finger images as evidence: a quality score to decide "press again", and lossless PNG written atomically.

Kept apart from the serial driver: none of this talks to a device, and the same code
judges and stores an image however it was captured."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from .errors import ImageEncodingError


def quality_score(image: npt.NDArray[np.uint8], block: int = 16) -> int:
    """Finger-image quality 0..100 (higher is better), from ridge flow and contrast per block.

    Why not NFIQ 2: it is a C++ tool with trained models; this score is
    small, documented, deterministic, and ranks the faults that matter at
    the counter (no finger, smudge, blur, noise, a fingertip's edge) in the
    same direction. It is *not* an NFIQ 2 value; do not report it as one.

    Formula. Let S = the image smoothed with a Gaussian (σ = 1.2 px),
    R = image − S (the pixel noise), and Gx, Gy the Sobel gradients of S.
    Split into ``block``×``block`` blocks. For each block b:

    * coherence  c_b = √((Σ Gx² − Σ Gy²)² + 4 (Σ GxGy)²) / (Σ Gx² + Σ Gy²)
      (1 = perfectly parallel ridges, 0 = no dominant direction);
    * contrast   s_b = std(S in b);  noise  r_b = std(R in b).

    A block is *foreground* (finger) when s_b ≥ 8 grey levels. Over the F
    foreground blocks of N in all:

        A = min(1, F / (0.35 N))                       enough finger area
        C = mean_b min(1, c_b / 0.75)                  clear ridge flow
        K = mean_b min(1, s_b / 40)                    ridge/valley contrast
        N' = mean_b min(1, s_b / (2 r_b))              signal above noise

        quality = round(100 · A · C · K · N')          (0 when F = 0)

    On the simulator's synthetic fingers: a clean press scores about 90,
    a blurred one about 35, a very noisy one about 20, an empty sensor 0.
    """
    img = np.asarray(image)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"quality_score needs a 2-D grey image, got shape {img.shape}")
    grey = img.astype(np.float32)
    h, w = (grey.shape[0] // block) * block, (grey.shape[1] // block) * block
    if h == 0 or w == 0:
        return 0
    grey = grey[:h, :w]
    smooth = cv2.GaussianBlur(grey, (0, 0), 1.2)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)

    def blocks(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return a.reshape(h // block, block, w // block, block)

    gxx = blocks(gx * gx).sum(axis=(1, 3), dtype=np.float64)
    gyy = blocks(gy * gy).sum(axis=(1, 3), dtype=np.float64)
    gxy = blocks(gx * gy).sum(axis=(1, 3), dtype=np.float64)
    coherence = np.sqrt((gxx - gyy) ** 2 + 4 * gxy ** 2) / (gxx + gyy + 1e-9)
    contrast = blocks(np.asarray(smooth, dtype=np.float32)).std(axis=(1, 3))
    noise = blocks((grey - smooth).astype(np.float32)).std(axis=(1, 3))
    fg = contrast >= 8.0
    if not fg.any():
        return 0
    area = min(1.0, float(fg.mean()) / 0.35)
    flow = float(np.minimum(1.0, coherence[fg] / 0.75).mean())
    con = float(np.minimum(1.0, contrast[fg] / 40.0).mean())
    snr = float(np.minimum(1.0, contrast[fg] / (2.0 * noise[fg] + 1e-9)).mean())
    return int(round(100 * area * flow * con * snr))


def encode_png(image: npt.NDArray[np.uint8]) -> bytes:
    """Lossless PNG bytes of an 8-bit grey image (hash these bytes, store these bytes)."""
    try:
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    except cv2.error as exc:
        raise ImageEncodingError(f"OpenCV could not encode the finger image as PNG: {exc}") from exc
    if not ok:
        raise ImageEncodingError("OpenCV refused to encode the finger image as PNG; is it a 2-D uint8 array?")
    return bytes(buf)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write to a temp file in the same directory, fsync, rename: never a half-written file."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target


def save_png(image: npt.NDArray[np.uint8], path: str | os.PathLike[str]) -> Path:
    """Save as PNG atomically; returns the path written."""
    return write_atomic(path, encode_png(image))
