"""Chinese (and any other) names as plausible handwriting, from a CJK font's glyph outlines.

Why: a party called 王小明 signs 王小明, not an X. Each character's outline is read from Noto Sans CJK SC
(Debian's ``fonts-noto-cjk``, the .ttc read with fontTools), placed in the signing box the way a hand
writes — each character a little rotated, scaled, slanted and off the line, seeded by the name so a
session replays the same — filled, thinned to its centre lines, and traced as pen paths with a slow
tremor. The pressure along each path comes from the signer (``signer._pressure``). Sans rather than
Serif: its strokes are of even width, so the centre lines are the strokes a pen draws.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["FontMissing", "HANDWRITING_FONTS", "glyph_mask", "handwriting_strokes", "needs_cjk_font"]

HANDWRITING_FONTS = (Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"),
                     Path("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc"))
FACE_NAME = "Noto Sans CJK SC"
CURVE_STEPS = 8
POINT_SPACING_PX = 3


class FontMissing(RuntimeError):
    """No CJK font to draw the name with."""


def needs_cjk_font(name: str) -> bool:
    """True when the name has characters outside ASCII (which the Hershey script font cannot draw)."""
    return any(ord(ch) > 0x7F for ch in name)


@cache
def _font() -> tuple[Any, dict[int, str], int]:
    """(glyph set, cmap, units per em) of the SC face of the first Noto Sans CJK collection found."""
    from fontTools.ttLib import TTCollection

    for path in HANDWRITING_FONTS:
        if path.is_file():
            collection = TTCollection(str(path), lazy=True)
            for face in collection.fonts:
                if face["name"].getDebugName(4) == FACE_NAME:
                    return face.getGlyphSet(), face.getBestCmap(), int(face["head"].unitsPerEm)
    raise FontMissing(f"no {FACE_NAME} font (looked for {', '.join(map(str, HANDWRITING_FONTS))}); install fonts-noto-cjk")


class _PolygonPen:
    """A fontTools pen that flattens outlines (lines, quadratic and cubic curves) into closed polygons."""

    def __init__(self, transform: Callable[[float, float], tuple[float, float]]) -> None:
        self.transform = transform
        self.polygons: list[list[tuple[float, float]]] = []
        self.current: list[tuple[float, float]] = []

    def moveTo(self, pt: tuple[float, float]) -> None:  # noqa: N802 - fontTools' pen protocol
        self.current = [pt]

    def lineTo(self, pt: tuple[float, float]) -> None:  # noqa: N802
        self.current.append(pt)

    def curveTo(self, *points: tuple[float, float]) -> None:  # noqa: N802 - cubic (CFF) segments
        start = self.current[-1]
        for c1, c2, end in _cubic_runs(start, points):
            for k in range(1, CURVE_STEPS + 1):
                t = k / CURVE_STEPS
                u = 1 - t
                self.current.append((u ** 3 * start[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t ** 3 * end[0],
                                     u ** 3 * start[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t ** 3 * end[1]))
            start = end

    def qCurveTo(self, *points: tuple[float, float] | None) -> None:  # noqa: N802 - quadratic (TrueType) segments
        pts = [p for p in points if p is not None]
        start = self.current[-1]
        for i, control in enumerate(pts[:-1]):
            end = pts[-1] if i == len(pts) - 2 else ((control[0] + pts[i + 1][0]) / 2, (control[1] + pts[i + 1][1]) / 2)
            for k in range(1, CURVE_STEPS + 1):
                t = k / CURVE_STEPS
                self.current.append(((1 - t) ** 2 * start[0] + 2 * (1 - t) * t * control[0] + t * t * end[0],
                                     (1 - t) ** 2 * start[1] + 2 * (1 - t) * t * control[1] + t * t * end[1]))
            start = end
        if len(pts) == 1:
            self.current.append(pts[0])

    def closePath(self) -> None:  # noqa: N802
        if len(self.current) > 2:
            self.polygons.append([self.transform(x, y) for x, y in self.current])
        self.current = []

    endPath = closePath  # noqa: N815

    def addComponent(self, glyph_name: str, transformation: Any) -> None:  # noqa: N802 - CJK SC has none; never called
        raise NotImplementedError("composite glyphs are not used by Noto Sans CJK")


def _cubic_runs(start: tuple[float, float], points: tuple[tuple[float, float], ...]) -> list[tuple[Any, Any, Any]]:
    """Cubic segments of a curveTo (CFF gives exactly one: two controls and the end point)."""
    runs = []
    for i in range(0, len(points) - 2, 3):
        runs.append((points[i], points[i + 1], points[i + 2]))
    return runs


def _placements(name: str, box: tuple[int, int, int, int], em: int, jitter: bool) -> list[tuple[str, Callable[[float, float], tuple[float, float]]]]:
    """For each drawable character: a map from font units to screen pixels (the hand's placement of it)."""
    x0, y0, x1, y1 = box
    chars = [ch for ch in name if not ch.isspace()]
    size = min((x1 - x0) / max(len(chars), 1) / 1.05, (y1 - y0) * 0.85)
    left = x0 + ((x1 - x0) - size * 1.05 * len(chars)) / 2
    baseline = y0 + ((y1 - y0) + size * 0.76) / 2  # CJK glyphs sit on ~-0.12 em … 0.88 em
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    placed = []
    for index, ch in enumerate(chars):
        angle = math.radians(rng.uniform(-3.0, 3.0)) if jitter else 0.0
        scale = size / em * (rng.uniform(0.94, 1.04) if jitter else 1.0)
        shear = 0.08 if jitter else 0.0  # a right-handed writer's slant
        dx = size * (rng.uniform(-0.03, 0.03) if jitter else 0.0)
        dy = size * (rng.uniform(-0.04, 0.04) if jitter else 0.0)
        cx, cy = left + size * 1.05 * index + size * 0.5, baseline - size * 0.38
        cos, sin = math.cos(angle), math.sin(angle)

        def transform(x: float, y: float, *, s: float = scale, c: float = cos, n: float = sin, ox: float = cx + dx,
                      oy: float = cy + dy, sh: float = shear) -> tuple[float, float]:
            u, v = (x - em / 2) * s, -(y - em * 0.38) * s  # font units (y up, centred) → pixels (y down)
            u -= sh * v
            return (ox + c * u - n * v, oy + n * u + c * v)

        placed.append((ch, transform))
    return placed


def glyph_mask(name: str, box: tuple[int, int, int, int], *, jitter: bool = False) -> np.ndarray:
    """The name's glyphs filled, as a 0/1 image the size of the box's canvas (``jitter``: as the hand places them)."""
    glyphs, cmap, em = _font()
    x0, y0, x1, y1 = box
    canvas = np.zeros((y1 + 8, x1 + 8), np.uint8)
    for ch, transform in _placements(name, box, em, jitter):
        glyph_name = cmap.get(ord(ch))
        if glyph_name is None:
            continue
        pen = _PolygonPen(transform)
        glyphs[glyph_name].draw(pen)
        if pen.polygons:
            polygons = [np.round(np.asarray(p)).astype(np.int32) for p in pen.polygons]
            cv2.fillPoly(canvas, polygons, 1, lineType=cv2.LINE_8)
    return canvas


def _tremor(count: int, rng: np.random.Generator, amplitude: float = 1.2) -> np.ndarray:
    """A slow wander of the pen (pixels, shape (count, 2)): a random walk smoothed over ~20 samples."""
    walk = np.cumsum(rng.normal(0.0, 0.35, size=(count + 20, 2)), axis=0)
    kernel = np.ones(20) / 20
    smooth = np.stack([np.convolve(walk[:, i], kernel, mode="valid")[:count] for i in range(2)], axis=1)
    smooth -= smooth.mean(axis=0)
    peak = float(np.abs(smooth).max()) or 1.0
    return np.asarray(smooth * min(1.0, amplitude / peak))


def handwriting_strokes(name: str, box: tuple[int, int, int, int],
                        thin: Callable[[np.ndarray], np.ndarray]) -> list[list[tuple[float, float]]]:
    """Pen paths writing ``name`` in ``box`` (screen pixels), left to right, one or more per character."""
    x0, y0, x1, y1 = box
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")) ^ 0x5EED)
    strokes: list[list[tuple[float, float]]] = []
    mask = glyph_mask(name, box, jitter=True)
    skeleton = thin(mask > 0) * np.uint8(255)
    contours, _ = cv2.findContours(skeleton, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    for contour in sorted(contours, key=lambda c: (int(c[:, 0, 0].min()) // max(1, (x1 - x0) // 12), int(c[:, 0, 1].min()))):
        points = contour[:, 0, :].astype(float)
        if len(points) < 6:
            continue
        sampled = points[::POINT_SPACING_PX]
        sampled = sampled + _tremor(len(sampled), rng)
        strokes.append([(float(px), float(py)) for px, py in sampled])
    return strokes
