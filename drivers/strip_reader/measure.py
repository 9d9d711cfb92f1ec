"""Step 3: the test window and its lines, measured on the upright cassette; then the verdict.

One function per question the measurement answers (where is the window, is it lit well
enough, where are the lines, what baseline, do the halves agree), each refusing with a
``StripLinesError`` that says what to do, in the order the original single pass checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import StripLinesError
from .geometry import LUMA_RGB, CassetteDesign, Geometry
from .judgement import Judgement, StripReading, StripThresholds, judge

# Spread of the membrane's absorbance between the lines above which a reading
# is refused: about 3x the worst seen on photos within the simulator's
# default nuisance ranges (0.0042 over 300 photos).
MAX_NOISE = 0.015
# Largest difference allowed between the line intensities read from the two
# halves of the window (along the lines): 1.5x the worst over 300 photos in the
# default ranges (0.08); a shadow edge across the window gave 0.30.
MAX_SPLIT = 0.12


@dataclass(frozen=True)
class Window:
    """The test window on the upright cassette: its rows and its edges along the flow (pixels)."""

    ys0: int
    ys1: int
    x0: float
    x1: float
    span: float  # measured length / designed length

    def to_px(self, u: float, design: CassetteDesign) -> float:
        """A body-unit position along the flow, in pixels, by the window's measured edges."""
        return self.x0 + (u - design.window_x[0]) / (design.window_x[1] - design.window_x[0]) * (self.x1 - self.x0)


@dataclass(frozen=True)
class LinePositions:
    """Where C and T were found (pixels), and how far both sit from the design's positions."""

    t_pos: float
    c_pos: float
    shift: float
    max_shift: float


@dataclass(frozen=True)
class LineFit:
    """The baseline fit: membrane samples clear of both lines, and the pixels that make up each line."""

    u: np.ndarray  # xs scaled to -0.5..0.5 for a well-conditioned quadratic
    keep: np.ndarray
    sel_c: np.ndarray
    sel_t: np.ndarray
    scale: float  # what a full line integrates to

    @classmethod
    def around(cls, xs: np.ndarray, lines: LinePositions, w_px: float, scale: float) -> LineFit:
        keep = (np.abs(xs - lines.t_pos) > 1.3 * w_px) & (np.abs(xs - lines.c_pos) > 1.3 * w_px)
        if keep.sum() < 10:
            raise StripLinesError(
                "too little clean membrane around the lines to set a baseline; re-take the photo closer and sharper"
            )
        u = (xs - xs.mean()) / (float(np.ptp(xs)) or 1.0)
        return cls(u=u, keep=keep, sel_c=np.abs(xs - lines.c_pos) <= 1.0 * w_px,
                   sel_t=np.abs(xs - lines.t_pos) <= 1.0 * w_px, scale=scale)

    def lines_in(self, profile: np.ndarray) -> tuple[float, float, float]:
        """C, T and the membrane noise of one profile, on its own fitted baseline."""
        coef = np.polyfit(self.u[self.keep], profile[self.keep], 2)
        absorb = 1.0 - profile / np.maximum(np.polyval(coef, self.u), 1e-9)
        return (float(absorb[self.sel_c].sum()) / self.scale, float(absorb[self.sel_t].sum()) / self.scale,
                float(np.std(absorb[self.keep])))


def measure(body: np.ndarray, lin: np.ndarray, geo: Geometry, design: CassetteDesign,
            thresholds: StripThresholds) -> StripReading:
    """C, T, T/C, the verdict and its confidence from the upright cassette (``body`` BGR, ``lin`` linear)."""
    length = lin.shape[1]
    # lin is RGB-reversed (BGR); mix to luma-weighted linear light
    light = lin @ LUMA_RGB[::-1].astype(np.float32)
    window = find_window(light, design)
    w_px = design.line_width * length * window.span
    region, xs = membrane_region(body, light, window)
    prof = region.mean(axis=0).astype(np.float64)
    lines = locate_lines(prof, xs, window, design, w_px, length)
    fit = LineFit.around(xs, lines, w_px, float(design.luma_absorption * w_px))
    c, t, noise = fit.lines_in(prof)
    if noise > MAX_NOISE:
        raise StripLinesError(
            f"the membrane is too noisy or uneven to measure lines (noise {noise:.3f}); hold the camera still, "
            "add even light, clean the window and re-take the photo"
        )
    split = halves_disagreement(region, fit)
    return reading_of(c, t, noise, split, lines, geo, thresholds)


def find_window(light: np.ndarray, design: CassetteDesign) -> Window:
    """The window's edges: the rim shadow is the darkest column near each nominal edge."""
    d = design
    length = light.shape[1]
    wy0, wy1 = d.window_y
    ys0 = int(round((wy0 + 0.15 * (wy1 - wy0)) * length))
    ys1 = int(round((wy1 - 0.15 * (wy1 - wy0)) * length))
    col = light[ys0:ys1].mean(axis=0)
    col_s = np.convolve(col, np.ones(3) / 3, mode="same")
    edges = []
    for nominal in d.window_x:
        lo, hi = int((nominal - 0.025) * length), int((nominal + 0.025) * length)
        seg = col_s[lo:hi]
        idx = int(np.argmin(seg)) + lo
        depth = 1.0 - seg.min() / max(float(np.median(seg)), 1e-6)
        if depth <= 0.07 or idx in (lo, hi - 1):
            raise StripLinesError(
                f"the test window's {'left' if nominal == d.window_x[0] else 'right'} edge is not where the "
                "cassette design puts it, so the cassette's outline was probably misjudged (light background, "
                "shadow or glare); re-take the photo on a plain darker background without glare"
            )
        edges.append(float(idx))
    x0, x1 = edges
    span = (x1 - x0) / ((d.window_x[1] - d.window_x[0]) * length)
    if not 0.9 < span < 1.1:
        raise StripLinesError(
            f"the test window measures {span:.2f} x its designed length, so the cassette's outline was "
            "misjudged; re-take the photo from straight above on a plain darker background"
        )
    return Window(ys0=ys0, ys1=ys1, x0=x0, x1=x1, span=span)


def membrane_region(body: np.ndarray, light: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """The window's inside, clear of the rim shadow, and its column positions; refused if too dark or clipped."""
    ys0, ys1, x0, x1 = window.ys0, window.ys1, window.x0, window.x1
    inset = 0.10 * (x1 - x0)  # clear of the rim shadow, which a quadratic baseline cannot follow
    px0, px1 = int(math.ceil(x0 + inset)), int(math.floor(x1 - inset))
    region = light[ys0:ys1, px0:px1]
    level = float(np.median(body[ys0:ys1, px0:px1, 1]))
    if level < 40:
        raise StripLinesError(
            f"the test window is too dark to measure (green level {level:.0f}/255); add light or move the "
            "lamp and re-take the photo"
        )
    saturated = float((body[ys0:ys1, px0:px1] >= 254).any(axis=2).mean())
    if saturated > 0.2:
        raise StripLinesError(
            f"{saturated:.0%} of the test window is overexposed (white clipped); reduce the light or avoid "
            "glare on the window and re-take the photo"
        )
    return region, np.arange(px0, px1, dtype=np.float64)


def locate_lines(prof: np.ndarray, xs: np.ndarray, window: Window, design: CassetteDesign, w_px: float,
                 length: int) -> LinePositions:
    """C and T found together at their known spacing, on a first baseline (the membrane's upper envelope).

    ``length`` is the upright cassette's length in pixels; the search spans ±1.2 % of it."""
    t_nom, c_nom = window.to_px(design.t_x, design), window.to_px(design.c_x, design)
    env_k = int(3 * w_px) | 1
    envelope = running_percentile(prof, env_k, 90)
    absorb0 = 1.0 - prof / np.maximum(envelope, 1e-9)
    box = np.convolve(absorb0, np.ones(int(round(w_px))) / round(w_px), mode="same")

    def score_at(x: float) -> float:
        return float(np.interp(x, xs, box))

    max_shift = 0.012 * length
    shifts = np.arange(-max_shift, max_shift + 0.5, 1.0)
    scores = [score_at(t_nom + s) + score_at(c_nom + s) for s in shifts]
    shift = float(shifts[int(np.argmax(scores))])
    if max(scores) < 0.05:  # both lines faint: keep the design's positions
        shift = 0.0
    if abs(shift) > 0.8 * max_shift:
        raise StripLinesError(
            f"the lines sit {shift / length:+.3f} of the cassette length away from where the design puts them; "
            "this is not the expected cassette or the photo is distorted: re-take it from straight above"
        )
    return LinePositions(t_pos=t_nom + shift, c_pos=c_nom + shift, shift=shift, max_shift=max_shift)


def halves_disagreement(region: np.ndarray, fit: LineFit) -> float:
    """How far the two halves of the window (along the lines) disagree; refused above ``MAX_SPLIT``.

    A shadow edge or glare spot crossing the window makes them differ even when the averaged
    profile looks clean."""
    half = region.shape[0] // 2
    c_a, t_a, _ = fit.lines_in(region[:half].mean(axis=0).astype(np.float64))
    c_b, t_b, _ = fit.lines_in(region[half:].mean(axis=0).astype(np.float64))
    split = max(abs(c_a - c_b), abs(t_a - t_b))
    if split > MAX_SPLIT:
        raise StripLinesError(
            f"the two halves of the test window read differently (by {split:.3f} in line intensity): a shadow "
            "edge or glare crosses the window; re-take the photo in even light without shadows or reflections"
        )
    return split


def reading_of(c: float, t: float, noise: float, split: float, lines: LinePositions, geo: Geometry,
               thresholds: StripThresholds) -> StripReading:
    """The reading: clipped intensities, T/C, the verdict, and a confidence that falls with each doubt."""
    c = max(0.0, c)
    t = max(0.0, t)
    ratio = t / c if c > 1e-6 else 0.0
    notes = list(geo.notes)
    verdict = judge(c, ratio, thresholds)
    if verdict is Judgement.INVALID:
        notes.append(f"control line C {c:.3f} is not above C_min {thresholds.c_min:.3f}: the card is invalid")
    confidence = (max(0.0, 1.0 - noise / MAX_NOISE) * (1.0 - 0.5 * split / MAX_SPLIT)
                  * (1.0 - 0.5 * abs(lines.shift) / lines.max_shift))
    if noise > 0.5 * MAX_NOISE:
        notes.append(f"membrane noise {noise:.3f}: a sharper, better-lit photo would be more precise")
    return StripReading(c=c, t=t, t_over_c=ratio, judgement=verdict, thresholds=thresholds,
                        confidence=confidence, notes=tuple(notes))


def running_percentile(values: np.ndarray, k: int, q: float) -> np.ndarray:
    """The ``q``-th percentile over a sliding window of ``k`` samples (edges repeated), same length as ``values``."""
    half = k // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, k)
    return np.asarray(np.percentile(windows, q, axis=1), dtype=np.float64)
