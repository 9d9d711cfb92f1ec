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
from .geometry import MARGIN, WIN_LEN, Geometry
from .judgement import Judgement, StripReading, StripThresholds, judge
from .profile import LUMA_RGB, CassetteProfile

# Spread of the membrane's absorbance between the lines above which a reading
# is refused: about 3x the worst seen on photos within the simulator's
# default nuisance ranges (0.0042 over 300 photos).
MAX_NOISE = 0.015
# Largest difference allowed between the line intensities read from the two
# halves of the window (along the lines): 1.5x the worst over 300 photos in the
# default ranges (0.08); a shadow edge across the window gave 0.30.
MAX_SPLIT = 0.12
# How far (window lengths) the lines may sit from the profile's positions: the window's ends are found
# to about 1 %, a cassette's print tolerance adds about 1 %.
MAX_SHIFT = 0.04
# A C line whose equivalent width exceeds this many line widths is too blurred to measure.
MAX_BLUR_WIDTH = 2.2


@dataclass(frozen=True)
class Window:
    """The test window on the upright cassette: its rows and its edges along the flow (pixels)."""

    ys0: int
    ys1: int
    x0: float
    x1: float
    span: float  # measured length / designed length

    def to_px(self, u: float) -> float:
        """A position along the window (0 sample end, 1 far end), in pixels, by the window's measured ends."""
        return self.x0 + u * (self.x1 - self.x0)


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
                "too little clean membrane around the lines to set a baseline; re-take the photo closer and sharper",
                reason="too_small")
        u = (xs - xs.mean()) / (float(np.ptp(xs)) or 1.0)
        return cls(u=u, keep=keep, sel_c=np.abs(xs - lines.c_pos) <= 1.0 * w_px,
                   sel_t=np.abs(xs - lines.t_pos) <= 1.0 * w_px, scale=scale)

    def lines_in(self, profile: np.ndarray) -> tuple[float, float, float]:
        """C, T and the membrane noise of one profile, on its own fitted baseline."""
        coef = np.polyfit(self.u[self.keep], profile[self.keep], 2)
        absorb = 1.0 - profile / np.maximum(np.polyval(coef, self.u), 1e-9)
        return (float(absorb[self.sel_c].sum()) / self.scale, float(absorb[self.sel_t].sum()) / self.scale,
                float(np.std(absorb[self.keep])))


def window_light(body: np.ndarray, profile: CassetteProfile) -> np.ndarray:
    """Luma-weighted linear light of the upright window (``body`` is BGR)."""
    lin = (body.astype(np.float32) / 255.0) ** profile.gamma
    return np.asarray(lin @ LUMA_RGB[::-1].astype(np.float32), dtype=np.float32)


def measure(body: np.ndarray, geo: Geometry, profile: CassetteProfile, thresholds: StripThresholds) -> StripReading:
    """C, T, T/C, the verdict and its confidence from the upright window (``body`` BGR, sample end left)."""
    light = window_light(body, profile)
    window = find_edges(light, profile)
    w_px = profile.line_width * (window.x1 - window.x0)
    region, xs = membrane_region(body, light, window)
    prof = region.mean(axis=0).astype(np.float64)
    lines = locate_lines(prof, xs, window, profile, w_px)
    fit = LineFit.around(xs, lines, w_px, float(profile.luma_absorption * w_px))
    c, t, noise = fit.lines_in(prof)
    if noise > MAX_NOISE:
        raise StripLinesError(
            f"the membrane is too noisy or uneven to measure lines (noise {noise:.3f}); hold the camera still, "
            "add even light, clean the window and re-take the photo", reason="uneven"
        )
    check_sharpness(prof, xs, fit, lines, w_px, c)
    split = halves_disagreement(region, fit)
    return reading_of(c, t, noise, split, lines, geo, thresholds)


def line_score(body: np.ndarray, profile: CassetteProfile) -> float:
    """How strongly lines sit at the profile's T and C positions in this upright window (for orientation)."""
    light = window_light(body, profile)
    try:
        window = find_edges(light, profile)
    except StripLinesError:
        return -1.0
    w_px = profile.line_width * (window.x1 - window.x0)
    ys0, ys1 = window.ys0, window.ys1
    px0, px1 = int(window.x0 + 0.1 * (window.x1 - window.x0)), int(window.x1 - 0.1 * (window.x1 - window.x0))
    prof = light[ys0:ys1, px0:px1].mean(axis=0).astype(np.float64)
    xs = np.arange(px0, px1, dtype=np.float64)
    box = _box_absorbance(prof, w_px)
    t_nom, c_nom = window.to_px(profile.line_t), window.to_px(profile.line_c)
    shifts = np.arange(-MAX_SHIFT, MAX_SHIFT + 1e-9, 0.005) * (window.x1 - window.x0)
    return max(float(np.interp(t_nom + s, xs, box) + np.interp(c_nom + s, xs, box)) for s in shifts)


def check_sharpness(prof: np.ndarray, xs: np.ndarray, fit: LineFit, lines: LinePositions, w_px: float,
                    c: float) -> None:
    """Refuse a photo so blurred that the C line spreads over more than twice its width.

    The integrated absorbance does not change with blur, but a line spread that far runs into its
    neighbour and into the baseline, so the reading would be a guess."""
    if c < 0.25:
        return
    coef = np.polyfit(fit.u[fit.keep], prof[fit.keep], 2)
    absorb = 1.0 - prof / np.maximum(np.polyval(coef, fit.u), 1e-9)
    near = np.abs(xs - lines.c_pos) <= 1.5 * w_px
    peak = float(absorb[near].max())
    width = float(absorb[near].sum()) / max(peak, 1e-9)
    if width > MAX_BLUR_WIDTH * w_px:
        raise StripLinesError(
            f"the photo is too blurred to measure the lines (the C line spreads to {width / w_px:.1f} x its width); "
            "hold the camera still, let it focus on the cassette and re-take the photo", reason="blurred")


def find_edges(light: np.ndarray, profile: CassetteProfile) -> Window:
    """The window's ends along the flow: the rim shadow is the darkest column near each nominal end."""
    width = round(WIN_LEN / profile.window_aspect)
    ys0, ys1 = MARGIN + round(0.15 * width), MARGIN + round(0.85 * width)
    col = light[ys0:ys1].mean(axis=0)
    col_s = np.convolve(col, np.ones(3) / 3, mode="same")
    edges = []
    for end, nominal in (("sample", MARGIN), ("far", MARGIN + WIN_LEN)):
        lo, hi = int(nominal - 0.08 * WIN_LEN), int(nominal + 0.08 * WIN_LEN)
        seg = col_s[lo:hi]
        idx = int(np.argmin(seg)) + lo
        depth = 1.0 - seg.min() / max(float(np.median(seg)), 1e-6)
        if depth <= 0.04 or idx in (lo, hi - 1):
            raise StripLinesError(
                f"the result window's {end} end has no clear rim, so the window's outline was probably misjudged "
                "(glare, a shadow edge or a smudge); re-take the photo in even light without glare", reason="no_window")
        edges.append(float(idx))
    x0, x1 = edges
    return Window(ys0=ys0, ys1=ys1, x0=x0, x1=x1, span=(x1 - x0) / WIN_LEN)


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
            "lamp and re-take the photo", reason="dark"
        )
    saturated = float((body[ys0:ys1, px0:px1] >= 254).any(axis=2).mean())
    if saturated > 0.2:
        raise StripLinesError(
            f"{saturated:.0%} of the test window is overexposed (white clipped); reduce the light or avoid "
            "glare on the window and re-take the photo", reason="overexposed"
        )
    return region, np.arange(px0, px1, dtype=np.float64)


def locate_lines(prof: np.ndarray, xs: np.ndarray, window: Window, profile: CassetteProfile,
                 w_px: float) -> LinePositions:
    """C and T found together at their known spacing, on a first baseline (the membrane's upper envelope).

    The search spans ±``MAX_SHIFT`` of the window's length."""
    t_nom, c_nom = window.to_px(profile.line_t), window.to_px(profile.line_c)
    box = _box_absorbance(prof, w_px)

    def score_at(x: float) -> float:
        return float(np.interp(x, xs, box))

    length = window.x1 - window.x0
    max_shift = MAX_SHIFT * length
    shifts = np.arange(-max_shift, max_shift + 0.5, 1.0)
    scores = [score_at(t_nom + s) + score_at(c_nom + s) for s in shifts]
    shift = float(shifts[int(np.argmax(scores))])
    if max(scores) < 0.05:  # both lines faint: keep the profile's positions
        shift = 0.0
    if abs(shift) > 0.8 * max_shift:
        raise StripLinesError(
            f"the lines sit {shift / length:+.3f} of the window's length away from where the {profile.name} profile "
            "puts them; this is another kind of cassette (choose its profile) or the photo is distorted: re-take it "
            "from straight above", reason="lines"
        )
    return LinePositions(t_pos=t_nom + shift, c_pos=c_nom + shift, shift=shift, max_shift=max_shift)


def _box_absorbance(prof: np.ndarray, w_px: float) -> np.ndarray:
    """Absorbance against the membrane's upper envelope, averaged over one line width."""
    envelope = running_percentile(prof, int(3 * w_px) | 1, 90)
    absorb0 = 1.0 - prof / np.maximum(envelope, 1e-9)
    k = max(1, round(w_px))
    return np.convolve(absorb0, np.ones(k) / k, mode="same")


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
            "edge or glare crosses the window; re-take the photo in even light without shadows or reflections",
            reason="uneven"
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
