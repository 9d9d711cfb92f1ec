"""Media metadata and thumbnails for recordings, with OpenCV.

A recording that OpenCV cannot decode, or that ends early, is still evidence:
it is kept and its manifest says what was wrong (``problems``), never
dropped. Probing reads the stored blob (local disk), not the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["probe_video", "thumbnail_jpeg", "probe_image"]

THUMBNAIL_WIDTH = 320


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else ""


def probe_video(path: Path) -> dict[str, Any]:
    """Duration, fps, resolution, codec and frame count; ``problems`` lists what does not add up."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    info: dict[str, Any] = {"decodable": False, "problems": []}
    try:
        if not capture.isOpened():
            info["problems"].append("OpenCV cannot open the container (damaged or unsupported format)")
            return info
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        info.update(
            fps=round(fps, 3), width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            codec=_fourcc(capture.get(cv2.CAP_PROP_FOURCC)), declared_frames=declared,
        )
        decoded = 0
        while True:
            ok = capture.grab()
            if not ok:
                break
            decoded += 1
        info["frame_count"] = decoded
        info["duration_s"] = round(decoded / fps, 3) if fps else None
        info["decodable"] = decoded > 0
        if decoded == 0:
            info["problems"].append("no frame could be decoded")
        elif declared and decoded < declared:
            info["problems"].append(f"truncated: {decoded} of {declared} declared frames decode")
    finally:
        capture.release()
    return info


def probe_image(path: Path) -> dict[str, Any]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return {"decodable": False, "problems": ["OpenCV cannot decode the image"]}
    return {"decodable": True, "width": int(image.shape[1]), "height": int(image.shape[0]), "problems": []}


def thumbnail_jpeg(path: Path, is_video: bool) -> bytes | None:
    """A small JPEG of the first decodable frame (video) or the image itself."""
    import cv2

    frame = None
    if is_video:
        capture = cv2.VideoCapture(str(path))
        try:
            ok, frame = capture.read() if capture.isOpened() else (False, None)
            if not ok:
                frame = None
        finally:
            capture.release()
    else:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if frame is None:
        return None
    height, width = frame.shape[:2]
    scale = THUMBNAIL_WIDTH / max(width, 1)
    small = cv2.resize(frame, (THUMBNAIL_WIDTH, max(1, int(height * scale))), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return bytes(encoded) if ok else None
