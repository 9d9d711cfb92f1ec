"""What the reader hands back: a judged finger image, a search result, an enrolment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .image import encode_png, save_png, write_atomic
from .iso import iso_19794_4_record


@dataclass(frozen=True)
class FingerCapture:
    """One finger image as uploaded by the module, with its quality verdict."""

    image: npt.NDArray[np.uint8]  # IMAGE_HEIGHT × IMAGE_WIDTH (288 × 256), 0 = black
    quality: int  # quality_score(image), 0..100
    threshold: int  # the threshold it was judged against
    captured_at: datetime  # UTC, host clock, when the upload finished

    @property
    def acceptable(self) -> bool:
        return self.quality >= self.threshold

    @property
    def retry_prompt(self) -> str | None:
        """What to tell the person when the image is not good enough, else None."""
        if self.acceptable:
            return None
        return (f"Fingerprint quality {self.quality} is below {self.threshold}: lift the finger, "
                "clean and dry it, and press it flat on the sensor again.")

    def png(self) -> bytes:
        return encode_png(self.image)

    def save_png(self, path: str | os.PathLike[str]) -> Path:
        return save_png(self.image, path)

    def iso_record(self, *, finger_position: int = 0, compression: str = "raw") -> bytes:
        return iso_19794_4_record(self.image, quality=self.quality, finger_position=finger_position,
                                  compression=compression)

    def save_iso(self, path: str | os.PathLike[str], *, finger_position: int = 0,
                 compression: str = "raw") -> Path:
        return write_atomic(path, self.iso_record(finger_position=finger_position, compression=compression))


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a library search: ``page`` is None when no template matched."""

    page: int | None
    score: int
    capture: FingerCapture | None = None

    @property
    def matched(self) -> bool:
        return self.page is not None


@dataclass(frozen=True)
class Enrollment:
    """A finger stored in the module's library at ``page``."""

    page: int
    captures: tuple[FingerCapture, ...] = field(default=())
