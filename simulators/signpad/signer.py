"""Scripted signers: what a person does in front of the pad, as pen samples at 200 Hz.

A script is a list of steps (JSON-friendly dicts)::

    {"sign": "Jane Doe"}                      the name rendered as a pen path
    {"sign": "Jane Doe", "fraction": 0.5}     only the first half of it (for unplug tests)
    {"strokes": [{"points": [[x, y, p], …], "duration_ms": 600}, …]}
                                              explicit strokes in screen pixels, p in 0..1
    {"tap": "ok" | "clear" | "cancel"}        tap a button of the uploaded screen
    {"pause_ms": 300}                         pen out of range for a while
    {"unplug": true}                          the cable is pulled here

``load_script`` accepts a name (→ sign, tap OK), a JSON file path, or JSON
text (``{"steps": […]}`` or a bare list).

STU pads have no buttons of their own: the host draws them into the screen
image. The signer finds them the way a person would, by looking at the
uploaded image: filled or outlined rectangles of button size, named by the
width of their label (the shortest label is "OK", then "Clear", the longest
"Cancel"). A phase of the script ends after a Clear tap; the next phase
starts only once the host has uploaded a fresh screen, as a person waits
for the pad to redraw.
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = [
    "PenSample", "UNPLUG", "SignerScriptError", "load_script", "name_script", "detect_buttons",
    "name_strokes", "build_phase", "BUTTON_NAMES",
]

BUTTON_NAMES = ("ok", "clear", "cancel")  # in order of label width
SAMPLE_MS = 5.0


class SignerScriptError(ValueError):
    """A signer script is malformed; the message names the step and what to fix."""


@dataclass(frozen=True)
class PenSample:
    """Where the pen is, in screen pixels; ``in_range`` False = the pen just left proximity."""

    x: float
    y: float
    pressure: float  # 0..1 of the pad's maximum
    touching: bool
    in_range: bool = True


class _Unplug:
    def __repr__(self) -> str:
        return "UNPLUG"


UNPLUG = _Unplug()
Event = PenSample | None | _Unplug  # None = 5 ms with nothing to report


# ---- loading scripts ---------------------------------------------------------------

def name_script(name: str, *, finish: str = "ok", clear_first: bool = False,
                unplug_mid_signature: bool = False) -> list[dict[str, Any]]:
    """The usual scenarios for a signer called ``name``."""
    steps: list[dict[str, Any]] = []
    if clear_first:
        steps += [{"sign": name}, {"tap": "clear"}]
    if unplug_mid_signature:
        return steps + [{"sign": name, "fraction": 0.5}, {"unplug": True}]
    return steps + [{"sign": name}, {"tap": finish}]


def load_script(spec: str) -> list[dict[str, Any]]:
    """A name, a path to a JSON script, or JSON text → validated steps."""
    text = spec.strip()
    path = Path(text) if text and len(text) < 4096 and not text.startswith(("{", "[")) else None
    if path is not None and path.suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SignerScriptError(f"cannot read signer script {spec}: {exc}") from exc
    if text.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SignerScriptError(f"signer script is not valid JSON: {exc}") from exc
        steps = data.get("steps") if isinstance(data, dict) else data
        if not isinstance(steps, list):
            raise SignerScriptError('a signer script is a list of steps or {"steps": [...]}')
        validate_steps(steps)
        return steps
    if not text:
        raise SignerScriptError("the signer name is empty; give a name or a JSON script")
    return name_script(text)


def validate_steps(steps: Iterable[Any]) -> None:
    for i, step in enumerate(steps):
        if not isinstance(step, dict):
            raise SignerScriptError(f"step {i} must be an object, got {step!r}")
        if "sign" in step:
            if not isinstance(step["sign"], str) or not step["sign"].strip():
                raise SignerScriptError(f"step {i}: 'sign' needs a non-empty name")
            fraction = step.get("fraction", 1.0)
            if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                raise SignerScriptError(f"step {i}: 'fraction' must be in (0, 1]")
        elif "strokes" in step:
            strokes = step["strokes"]
            if not isinstance(strokes, list) or not strokes:
                raise SignerScriptError(f"step {i}: 'strokes' must be a non-empty list")
            for j, stroke in enumerate(strokes):
                points = stroke.get("points") if isinstance(stroke, dict) else None
                if not isinstance(points, list) or not points or not all(
                        isinstance(p, list) and len(p) == 3 and all(isinstance(v, (int, float)) for v in p)
                        for p in points):
                    raise SignerScriptError(f"step {i} stroke {j}: 'points' must be [[x, y, pressure], ...]")
                duration = stroke.get("duration_ms", 5 * len(points))
                if not isinstance(duration, (int, float)) or duration <= 0:
                    raise SignerScriptError(f"step {i} stroke {j}: 'duration_ms' must be positive")
        elif "tap" in step:
            if step["tap"] not in BUTTON_NAMES:
                raise SignerScriptError(f"step {i}: 'tap' must be one of {', '.join(BUTTON_NAMES)}")
        elif "pause_ms" in step:
            if not isinstance(step["pause_ms"], (int, float)) or step["pause_ms"] < 0:
                raise SignerScriptError(f"step {i}: 'pause_ms' must be a non-negative number")
        elif step.get("unplug") is True:
            pass
        else:
            raise SignerScriptError(f"step {i} {step!r} is none of sign / strokes / tap / pause_ms / unplug")


# ---- looking at the screen -----------------------------------------------------------

def _mode(values: np.ndarray) -> int:
    return int(np.bincount(values.ravel(), minlength=256).argmax())


def detect_buttons(screen: np.ndarray) -> dict[str, tuple[int, int, int, int]]:
    """Button rectangles (x0, y0, x1, y1) found in a BGR screen image, by name; {} if not three."""
    height, width = screen.shape[:2]
    gray = cv2.cvtColor(screen, cv2.COLOR_BGR2GRAY)
    background = _mode(gray)
    mask = (np.abs(gray.astype(np.int16) - background) > 24).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    rects: list[tuple[int, int, int, int]] = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if w < 40 or h < 24 or w > 0.45 * width or h > 0.3 * height:
            continue
        if cv2.contourArea(contour) < 0.85 * w * h:
            continue
        rects.append((x, y, x + w, y + h))
    if len(rects) != 3:
        return {}
    widths = []
    for x0, y0, x1, y1 in rects:
        inner = gray[y0 + 5:y1 - 5, x0 + 5:x1 - 5]
        if inner.size == 0:
            return {}
        ink = np.abs(inner.astype(np.int16) - _mode(inner)) > 60
        cols = np.flatnonzero(ink.any(axis=0))
        widths.append(int(cols[-1] - cols[0] + 1) if cols.size else 0)
    order = sorted(range(3), key=lambda i: (widths[i], rects[i][0]))
    return {BUTTON_NAMES[rank]: rects[i] for rank, i in enumerate(order)}


def _ascii(name: str) -> str:
    """Hershey fonts draw ASCII only: strip accents, replace the rest."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return text.strip() or "X"


def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning of a 0/1 image to 1-pixel-wide lines (vectorised, few iterations)."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:]
            p5, p6, p7 = img[2:, 2:], img[2:, 1:-1], img[2:, :-2]
            p8, p9 = img[1:-1, :-2], img[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            neighbours = sum(ring[:8])
            transitions = sum(((a == 0) & (b == 1)).astype(np.uint8) for a, b in zip(ring, ring[1:]))
            if step == 0:
                cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            core = img[1:-1, 1:-1]
            remove = (core == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & cond
            if remove.any():
                core[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1]


def name_strokes(name: str, box: tuple[int, int, int, int]) -> list[list[tuple[float, float]]]:
    """The name fitted into ``box`` as pen paths: an ASCII name in OpenCV's script font (one path per glyph
    blob), any other (王小明) as handwriting from a CJK font's glyph outlines (``handwriting``).

    The glyphs are thinned to 1-pixel lines and each line's outline is traced,
    so the pen goes along a stroke and back over it, which renders like the
    glyph itself.
    """
    from .handwriting import FontMissing, handwriting_strokes, needs_cjk_font

    if needs_cjk_font(name):
        try:
            return handwriting_strokes(name.strip(), box, _thin)
        except FontMissing as exc:
            print(f"signpad: {exc}; signing an X instead", file=sys.stderr, flush=True)
    x0, y0, x1, y1 = box
    text = _ascii(name)
    font = cv2.FONT_HERSHEY_SCRIPT_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, 1.0, 1)
    scale = 0.9 * min((x1 - x0) / max(tw, 1), (y1 - y0) / max(th + base, 1))
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    canvas = np.zeros((y1 + 8, x1 + 8), np.uint8)
    org = (int(x0 + ((x1 - x0) - tw) / 2), int(y0 + ((y1 - y0) + th) / 2))
    cv2.putText(canvas, text, org, font, scale, 255, 1, cv2.LINE_8)
    skeleton = _thin(canvas > 0) * np.uint8(255)
    contours, _ = cv2.findContours(skeleton, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    strokes = []
    for contour in sorted(contours, key=lambda c: int(c[:, 0, 0].min())):
        points = contour[:, 0, :].astype(float)
        if len(points) < 4:
            continue
        sampled = points[::3]
        strokes.append([(float(px), float(py)) for px, py in sampled])
    return strokes


# ---- building the timeline --------------------------------------------------------------

def _pressure(i: int, n: int, phase: float) -> float:
    ramp = min(1.0, (i + 1) / 5, (n - i) / 5)
    return max(0.05, ramp * (0.55 + 0.25 * math.sin(2 * math.pi * i / 40 + phase)))


def _move(start: tuple[float, float] | None, end: tuple[float, float]) -> list[Event]:
    """Hover from ``start`` to ``end`` (enter range at ``end`` if the pen was away)."""
    if start is None:
        return [PenSample(end[0], end[1], 0.0, False) for _ in range(8)]
    dist = math.dist(start, end)
    n = max(6, int(dist / 10))
    return [PenSample(start[0] + (end[0] - start[0]) * k / n, start[1] + (end[1] - start[1]) * k / n, 0.0, False)
            for k in range(1, n + 1)]


def _resample(points: list[list[float]], duration_ms: float) -> list[tuple[float, float, float]]:
    """Points spread evenly over ``duration_ms`` → one point per 5 ms, linearly interpolated."""
    n_out = max(1, int(round(duration_ms / SAMPLE_MS)))
    if len(points) == 1:
        return [tuple(points[0])] * n_out  # type: ignore[list-item]
    arr = np.asarray(points, dtype=float)
    src = np.linspace(0.0, 1.0, len(arr))
    dst = np.linspace(0.0, 1.0, n_out)
    return [(float(np.interp(t, src, arr[:, 0])), float(np.interp(t, src, arr[:, 1])),
             float(np.interp(t, src, arr[:, 2]))) for t in dst]


class _Builder:
    def __init__(self, screen: np.ndarray, problems: list[str]) -> None:
        self.screen = screen
        self.height, self.width = screen.shape[:2]
        self.events: list[Event] = []
        self.pos: tuple[float, float] | None = None
        self.problems = problems
        self.buttons = detect_buttons(screen)

    def leave(self) -> None:
        if self.pos is not None:
            self.events += [PenSample(self.pos[0], self.pos[1], 0.0, False) for _ in range(3)]
            self.events.append(PenSample(self.pos[0], self.pos[1], 0.0, False, in_range=False))
            self.events += [None] * 30
            self.pos = None

    def stroke(self, points: list[tuple[float, float, float]]) -> None:
        self.events += _move(self.pos, points[0][:2])
        self.events += [PenSample(x, y, p, True) for x, y, p in points]
        self.pos = points[-1][:2]

    def sign(self, name: str, fraction: float) -> None:
        top = int(0.28 * self.height)
        bottom = min((r[1] for r in self.buttons.values()), default=int(0.75 * self.height)) - int(0.06 * self.height)
        box = (int(0.08 * self.width), top, int(0.92 * self.width), max(bottom, top + 20))
        strokes = name_strokes(name, box)
        total = sum(len(s) for s in strokes)
        budget = max(1, int(total * fraction))
        for index, stroke in enumerate(strokes):
            if budget <= 0:
                break
            stroke = stroke[:budget]
            budget -= len(stroke)
            n = len(stroke)
            self.stroke([(x, y, _pressure(i, n, index)) for i, (x, y) in enumerate(stroke)])
            if budget > 0:
                self.events += [PenSample(self.pos[0], self.pos[1], 0.0, False) for _ in range(4)]  # type: ignore[index]

    def tap(self, button: str) -> None:
        rect = self.buttons.get(button)
        if rect is None:
            self.problems.append(f"no {button!r} button found on the uploaded screen; the signer cannot tap it")
            return
        cx, cy = (rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2
        self.events += _move(self.pos, (cx, cy))
        self.events += [PenSample(cx + (k % 3) - 1, cy, 0.6, True) for k in range(16)]
        self.pos = (cx, cy)
        self.leave()


def build_phase(steps: list[dict[str, Any]], start: int, screen: np.ndarray,
                problems: list[str]) -> tuple[list[Event], int]:
    """Events for steps[start:] up to and including the next Clear tap; returns (events, next index)."""
    builder = _Builder(screen, problems)
    index = start
    while index < len(steps):
        step = steps[index]
        index += 1
        if "sign" in step:
            builder.sign(step["sign"], float(step.get("fraction", 1.0)))
        elif "strokes" in step:
            for stroke in step["strokes"]:
                points = _resample(stroke["points"], float(stroke.get("duration_ms", 5 * len(stroke["points"]))))
                builder.stroke([(x, y, min(1.0, max(0.0, p))) for x, y, p in points])
                builder.events += [PenSample(builder.pos[0], builder.pos[1], 0.0, False)  # type: ignore[index]
                                   for _ in range(4)]
        elif "tap" in step:
            builder.tap(step["tap"])
            if step["tap"] == "clear":
                break
        elif "pause_ms" in step:
            builder.leave()
            builder.events += [None] * int(step["pause_ms"] / SAMPLE_MS)
        elif step.get("unplug") is True:
            builder.events.append(UNPLUG)
            index = len(steps)
            break
    return builder.events, index
