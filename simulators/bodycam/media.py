"""Recordings a simulated body camera holds: real, playable media made here.

Why real media: the dock workflow hashes, probes and thumbnails what it
ingests; placeholder bytes would let bugs in those steps pass unseen. Video
is MJPG in AVI (what OpenCV writes everywhere) or MPEG-4 part 2 in MP4, with
the overlay real recorders burn in (date/time, police number, serial); audio
is 16-bit mono PCM WAV (stdlib ``wave``); photos are JPEG. Bulk "fill" files
are random bytes for throughput tests and are not playable.
"""

from __future__ import annotations

import math
import struct
import wave
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np

__all__ = ["RecordingSpec", "recording_name", "write_video", "write_audio", "write_photo", "write_fill", "write_tiny_audio",
           "overlay"]

KIND_EXT = {"video": "avi", "video_mp4": "mp4", "audio": "wav", "photo": "jpg", "fill": "mp4", "tiny": "wav"}


@dataclass(frozen=True)
class RecordingSpec:
    """One file the recorder made. ``start`` is device local time (naive)."""

    kind: str  # video | video_mp4 | audio | photo | fill | tiny
    start: datetime
    seconds: float = 2.0
    important: bool = False
    size_bytes: int = 0  # fill files only


def recording_name(serial: str, user_no: str, spec: RecordingSpec, seq: int) -> str:
    """``DCIM/YYYYMMDD/<serial>_<userNo>_<YYYYMMDDhhmmss>_<nnnn>[_IMP].<ext>`` (POSIX separators)."""
    stamp = spec.start.strftime("%Y%m%d%H%M%S")
    suffix = "_IMP" if spec.important else ""
    return f"DCIM/{spec.start:%Y%m%d}/{serial}_{user_no}_{stamp}_{seq:04d}{suffix}.{KIND_EXT[spec.kind]}"


def overlay(frame: np.ndarray, when: datetime, user_no: str, serial: str) -> None:
    """Burn in the OSD line real recorders show: time, police number, device serial."""
    height, width = frame.shape[:2]
    scale = max(0.3, width / 1280 * 0.9)
    thickness = max(1, round(width / 640))
    text = f"{when:%Y-%m-%d %H:%M:%S}  {user_no}  {serial}"
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    cv2.rectangle(frame, (4, 4), (min(width - 1, 12 + tw), 12 + th + base), (0, 0, 0), -1)
    cv2.putText(frame, text, (8, 8 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def _scene(width: int, height: int, t: float) -> np.ndarray:
    """A moving scene, so consecutive frames differ like real footage."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (x + t * 40) % 256
    frame[..., 1] = (y + t * 25) % 256
    frame[..., 2] = 128
    cx = int((0.5 + 0.4 * math.sin(t)) * width)
    cy = int((0.5 + 0.3 * math.cos(t * 1.3)) * height)
    cv2.circle(frame, (cx, cy), max(4, height // 8), (0, 0, 255), -1)
    return frame


def write_video(path: Path, start: datetime, seconds: float, size: tuple[int, int], fps: float,
                user_no: str, serial: str, container: str = "avi") -> None:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if container == "avi" else "mp4v"))  # type: ignore[attr-defined]
    writer = cv2.VideoWriter(str(path), fourcc, fps, size)
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {container} video to {path}")
    try:
        frames = max(1, round(seconds * fps))
        for i in range(frames):
            t = i / fps
            frame = _scene(size[0], size[1], t)
            overlay(frame, start + timedelta(seconds=int(t)), user_no, serial)
            writer.write(frame)
    finally:
        writer.release()


def write_audio(path: Path, seconds: float, rate: int = 8000, tone_hz: float = 440.0) -> None:
    count = max(1, int(seconds * rate))
    t = np.arange(count, dtype=np.float32) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * tone_hz * t)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def write_photo(path: Path, when: datetime, size: tuple[int, int], user_no: str, serial: str) -> None:
    frame = _scene(size[0], size[1], when.second)
    overlay(frame, when, user_no, serial)
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG photo")
    path.write_bytes(data.tobytes())


def write_fill(path: Path, size_bytes: int, seed: int) -> None:
    """Random, incompressible bytes, fast: one random MiB, each copy stamped with its index."""
    block = bytearray(np.random.default_rng(seed).bytes(1 << 20))
    with open(path, "wb") as out:
        written = 0
        index = 0
        while written < size_bytes:
            block[:8] = struct.pack("<Q", index)
            chunk = min(len(block), size_bytes - written)
            out.write(memoryview(block)[:chunk])
            written += chunk
            index += 1


def write_tiny_audio(path: Path, index: int) -> None:
    """A valid 52-byte WAV (four samples) whose samples encode ``index``: thousands of distinct,
    playable recordings that cost nothing to make, for docks stressed by file count, not size."""
    samples = struct.pack("<Q", index)
    header = b"RIFF" + struct.pack("<I", 36 + len(samples)) + b"WAVE" + b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16) + b"data" + struct.pack("<I", len(samples))
    path.write_bytes(header + samples)
