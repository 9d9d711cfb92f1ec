"""Showing a sealed document on the signature pad's screen, for the party to read before signing the receipt.

The STU pad takes a full-screen image (docs/protocols/signpad-stu.md §4; ``SignaturePad.upload_image``).
A page of A4 on an 800 × 480 screen is legible only at the screen's full width, so each page is rasterised
at that width (poppler's ``pdftoppm``: the same renderer a reader's PDF viewer would use, not our own
drawing of the fields) and shown in screen-high views from the top, overlapping by a tenth so no line is cut
in two without also being shown whole, each for ``dwell_s`` seconds, with "page p/P, view v/V" in a corner.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from firmware_bridge.stu_hid.feature import Capability
from gateway.errors import ConfigError, GatewayError

__all__ = ["page_views", "show_on_pad", "DEFAULT_DWELL_S"]

DEFAULT_DWELL_S = 8.0
OVERLAP = 0.1
Image = npt.NDArray[np.uint8]


class Screen(Protocol):
    """What of ``drivers.signpad.SignaturePad`` this needs."""

    capability: Capability

    def upload_image(self, bgr: Image) -> None: ...


def _rasterise(pdf: Path, width: int, work: Path) -> list[Image]:
    tool = shutil.which("pdftoppm")
    if tool is None:
        raise ConfigError("pdftoppm is not installed, so the document cannot be shown on the pad",
                          "install poppler-utils (apt-get install poppler-utils), or deliver with --how station")
    done = subprocess.run([tool, "-png", "-scale-to-x", str(width), "-scale-to-y", "-1", str(pdf), str(work / "page")],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise GatewayError(f"pdftoppm could not render {pdf}: {done.stderr.strip()[:200]}", "check that the file is the sealed PDF")
    pages = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(work.glob("page*.png"))]
    return [np.asarray(p, dtype=np.uint8) for p in pages if p is not None]


def page_views(pdf: Path, width: int, height: int) -> list[Image]:
    """Every page of ``pdf`` at ``width`` pixels, cut into ``height``-pixel views (white below the page's end)."""
    views: list[Image] = []
    with tempfile.TemporaryDirectory(prefix="egw-pad-") as work:
        pages = _rasterise(pdf, width, Path(work))
    step = max(1, int(height * (1 - OVERLAP)))
    for number, page in enumerate(pages, 1):
        tops = list(range(0, max(1, page.shape[0] - height + step), step))
        for index, top in enumerate(tops, 1):
            view = np.full((height, width, 3), 255, dtype=np.uint8)
            part = page[top:top + height, :width]
            view[:part.shape[0], :part.shape[1]] = part
            label = f"{number}/{len(pages)}  {index}/{len(tops)}"
            cv2.putText(view, label, (width - 150, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
            views.append(view)
    return views


def show_on_pad(pad: Screen, pdf: Path, dwell_s: float = DEFAULT_DWELL_S, sleep: Callable[[float], None] = time.sleep) -> int:
    """Show ``pdf`` on the pad, view after view; the number of views shown."""
    views = page_views(pdf, pad.capability.screen_width, pad.capability.screen_height)
    for view in views:
        pad.upload_image(view)
        sleep(dwell_s)
    return len(views)
