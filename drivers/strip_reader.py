r"""Read a colloidal-gold test cassette from a photo: C and T line intensities, T/C, judgement.

Why a camera reader: food-safety rapid tests (docs/protocols/rapidtest-astm.md §6) are
judged from the C (control) and T (test) line intensities. A phone or desk
camera photo is kept as evidence by the caller; this module only reads it
and never writes to it.

Pipeline (``StripReader.read``)::

    BGR photo ──► whiteness mask (min of B,G,R; Otsu, then stricter levels on a light
                  background) ──► largest cassette-shaped blob
              ──► 4 corners (approxPolyDP, else extreme points) ──► perspective warp
                  to an upright 800 x 232 cassette
              ──► linear light (sRGB-like gamma 2.2 undone)
              ──► which end holds the sample well? (turn 180 deg if needed)
              ──► window edges refined from their rim shadow
              ──► profile along the flow of luma-weighted linear light
                  (0.299 R + 0.587 G + 0.114 B), divided by a quadratic
                  membrane baseline fitted away from the lines (flattens
                  gradients, vignetting, the faint pink background)
              ──► C and T found together at their known spacing; each line's
                  intensity = its integrated absorbance / (0.622 x line width)
              ──► the same on each half of the window: the halves must agree

Cassette design this reader expects (body units, length 1.0, sample end
left; the simulator in ``simulators/strips`` draws the same design)::

    x=0        0.15        0.42   0.52   0.62   0.72            1.0
    +--------------------------------------------------------------+
    |   S        ___       +--------T------C------+                |
    |          /     \     |        |      |      |                |
    |         | well  |    |        |      |      |                |
    |          \_____/     +--------|------|------+                |
    +--------------------------------------------------------------+
    height 0.29; window y 0.095..0.195; lines 0.022 wide

The sample well makes the design asymmetric: the T line is the one nearer the
well, the C line the one further along the flow. An absent line reads ~0, so
"no C line" is a reading (judged invalid), not an error.

Intensity scale (the simulator's): a line of intensity i multiplies the bare
membrane's linear-light reflectance by 1 - i x (0.30, 0.80, 0.55) in R, G, B
across its 0.022 width, so 1.0 absorbs 80 % of the green light. The reader
profiles luma-weighted light, where a full line absorbs 0.622; luma is what
JPEG keeps at full resolution, so its chroma subsampling and quantisation
mostly cancel. The measurement integrates absorbance over the line, so
optical blur, which spreads a line without changing its area, does not
change the reading. A real cassette and camera need this scale calibrated
against reference cards (``CassetteDesign.gold_absorption``).

Refuse rather than guess: a photo is rejected (``StripReadError``, with
what to do) when the cassette is under 200 px long, the JPEG quality is under
40 (``read_file``), the window edges or the lines are not where the design
puts them (outline misjudged), the window is too dark or clipped, the
membrane between the lines is noisy (> 0.015), or the two halves of the
window disagree by more than 0.12 in line intensity (a shadow edge or glare
across it). Each limit is a few times the worst value seen on simulated
photos within the simulator's default nuisance ranges.

Judgement (competitive assay, docs/protocols/rapidtest-astm.md §6), on values rounded to the
3 decimals printed: C <= c_min -> invalid; else T/C <= positive_max ->
positive; T/C >= negative_min -> negative; otherwise suspicious.

Errors::

    DriverError
    └── StripReadError            the photo could not be read; the message says what to do
        ├── StripImageError       not a colour image / file unreadable or not an image
        ├── StripNotFoundError    no cassette of the expected design in the photo
        ├── StripLinesError       cassette found but the window cannot be measured
        └── StripCaptureError     camera / video source cannot be opened or gives no frame
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from drivers.errors import DriverError

__all__ = [
    "CassetteDesign",
    "Judgement",
    "StripCaptureError",
    "StripImageError",
    "StripLinesError",
    "StripNotFoundError",
    "StripReadError",
    "StripReader",
    "StripReading",
    "StripThresholds",
    "capture_from",
    "jpeg_quality_estimate",
    "judge",
]


# ---- errors --------------------------------------------------------------
class StripReadError(DriverError):
    """A strip photo could not be read."""


class StripImageError(StripReadError):
    """The input is not a usable colour image."""


class StripNotFoundError(StripReadError):
    """No test cassette of the expected design was found in the photo."""


class StripLinesError(StripReadError):
    """The cassette was found but its window could not be measured."""


class StripCaptureError(StripReadError):
    """The camera or video source could not be opened or gave no frame."""


# ---- results -------------------------------------------------------------
class Judgement(str, Enum):
    POSITIVE = "positive"
    SUSPICIOUS = "suspicious"
    NEGATIVE = "negative"
    INVALID = "invalid"


@dataclass(frozen=True)
class StripThresholds:
    """Judgement thresholds on T/C (docs/protocols/rapidtest-astm.md §6: C_min, A, B)."""

    c_min: float = 0.10
    positive_max: float = 0.70
    negative_min: float = 1.00

    def __post_init__(self) -> None:
        if not (math.isfinite(self.c_min) and math.isfinite(self.positive_max) and math.isfinite(self.negative_min)):
            raise ValueError("strip thresholds must be finite numbers")
        if self.c_min < 0:
            raise ValueError(f"c_min must be >= 0, got {self.c_min}")
        if self.positive_max > self.negative_min:
            raise ValueError(
                f"positive_max ({self.positive_max}) must not exceed negative_min ({self.negative_min}): "
                "T/C at or below A is positive, at or above B negative"
            )


def judge(c: float, t_over_c: float, thresholds: StripThresholds) -> Judgement:
    """The protocol's judgement, on values rounded to the 3 decimals that are printed.

    Rounding first keeps the printed line and the verdict consistent: a
    reading shown as ``T/C:0.700`` is judged as 0.700.
    """
    if round(c, 3) <= thresholds.c_min:
        return Judgement.INVALID
    ratio = round(t_over_c, 3)
    if ratio <= thresholds.positive_max:
        return Judgement.POSITIVE
    if ratio >= thresholds.negative_min:
        return Judgement.NEGATIVE
    return Judgement.SUSPICIOUS


@dataclass(frozen=True)
class StripReading:
    """One reading of one photo.

    ``confidence`` (0..1) falls with the membrane's measurement noise and with
    how far the found lines sit from where the design puts them; ``notes``
    say why it is not 1. ``image_sha256`` names the exact bytes read when the
    reading came from a file, so the reading can be tied to the evidence.
    """

    c: float
    t: float
    t_over_c: float
    judgement: Judgement
    thresholds: StripThresholds
    confidence: float
    notes: tuple[str, ...] = ()
    image_sha256: str | None = None

    def format(self) -> str:
        """The instrument's output string: ``C:x.xxx  T:x.xxx  T/C:x.xxx``."""
        return f"C:{self.c:.3f}  T:{self.t:.3f}  T/C:{self.t_over_c:.3f}"

    def to_json(self) -> dict[str, Any]:
        return {
            "c": round(self.c, 3),
            "t": round(self.t, 3),
            "t_over_c": round(self.t_over_c, 3),
            "judgement": self.judgement.value,
            "format": self.format(),
            "thresholds": asdict(self.thresholds),
            "confidence": round(self.confidence, 3),
            "notes": list(self.notes),
            "image_sha256": self.image_sha256,
        }


# ---- the cassette design (body units) -------------------------------------
@dataclass(frozen=True)
class CassetteDesign:
    """Where things are on the cassette; see the module docstring's drawing."""

    aspect: float = 0.29
    window_x: tuple[float, float] = (0.42, 0.72)
    window_y: tuple[float, float] = (0.095, 0.195)
    t_x: float = 0.52
    c_x: float = 0.62
    line_width: float = 0.022
    well_center: tuple[float, float] = (0.15, 0.145)
    well_radius: float = 0.055
    # linear light a full (1.0) line absorbs in R, G, B: colloidal gold is reddish purple
    gold_absorption: tuple[float, float, float] = (0.30, 0.80, 0.55)
    gamma: float = 2.2

    @property
    def luma_absorption(self) -> float:
        """What a full line absorbs of the luma-weighted light the reader profiles."""
        return float(np.dot(_LUMA_RGB, self.gold_absorption))


# BT.601 luma weights, the ones JPEG uses for its full-resolution Y plane. A
# profile of linear R, G, B mixed with these weights cancels (to first order,
# on a near-neutral membrane) the coarse chroma errors that JPEG's 4:2:0
# subsampling and chroma quantisation put into each channel separately.
_LUMA_RGB = np.array([0.299, 0.587, 0.114])


_CANON_LEN = 800
# Below this length (photo pixels) a line is under 4.5 px wide and the reading
# drifts; refuse and ask for a closer photo.
_MIN_LENGTH_PX = 200
# Spread of the membrane's absorbance between the lines above which a reading
# is refused: about 3x the worst seen on photos within the simulator's
# default nuisance ranges (0.0042 over 300 photos).
_MAX_NOISE = 0.015
# Largest difference allowed between the line intensities read from the two
# halves of the window (along the lines): 1.5x the worst over 300 photos in the
# default ranges (0.08); a shadow edge across the window gave 0.30.
_MAX_SPLIT = 0.12


@dataclass
class _Geometry:
    notes: list[str] = field(default_factory=list)
    upside_down: bool = False


class StripReader:
    """Reads C, T and T/C from a photo of a test cassette (any rotation, uneven light).

    Thresholds decide the judgement; the design describes the cassette. One
    reader may be shared: ``read`` keeps no state between calls.
    """

    def __init__(self, thresholds: StripThresholds | None = None, design: CassetteDesign | None = None) -> None:
        self.thresholds = thresholds or StripThresholds()
        self.design = design or CassetteDesign()

    # -- public ---------------------------------------------------------------
    def read_file(self, path: str | Path) -> StripReading:
        """Read a photo file without modifying it; the reading records the file's SHA-256."""
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise StripImageError(f"cannot open photo {p}: {exc.strerror or exc}; check the path and permissions") from exc
        buf = np.frombuffer(data, np.uint8)
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if image is None:
            raise StripImageError(
                f"{p} is not an image OpenCV can decode ({len(data)} bytes); take the photo again as JPEG or PNG"
            )
        quality = jpeg_quality_estimate(data)
        if quality is not None and quality < _MIN_JPEG_QUALITY:
            raise StripImageError(
                f"{p} is compressed too hard to measure line intensities (JPEG quality about {quality}); set the "
                "camera or app to high quality (90 or more) and re-take the photo"
            )
        reading = self.read(image)
        notes = reading.notes
        if quality is not None and quality < 50:
            notes = notes + (f"JPEG quality about {quality}: compression adds error; use high quality next time",)
        return dataclasses.replace(reading, notes=notes, image_sha256=hashlib.sha256(data).hexdigest())

    def read(self, image: np.ndarray) -> StripReading:
        """Read one BGR (OpenCV order) 8-bit photo."""
        bgr = _as_bgr(image)
        corners, geo = self._find_cassette(bgr)
        body = self._warp(bgr, corners)
        lin = (body.astype(np.float32) / 255.0) ** self.design.gamma
        self._orient(lin, geo)
        if geo.upside_down:  # turn the sample well to the left
            body = np.ascontiguousarray(body[::-1, ::-1])
            lin = np.ascontiguousarray(lin[::-1, ::-1])
        return self._measure(body, lin, geo)

    # -- step 1: find the cassette ------------------------------------------------
    def _find_cassette(self, bgr: np.ndarray) -> tuple[np.ndarray, _Geometry]:
        geo = _Geometry()
        h, w = bgr.shape[:2]
        scale = min(1.0, 1000.0 / max(h, w))
        small = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) if scale < 1 else bgr
        sh, sw = small.shape[:2]
        whiteness = cv2.GaussianBlur(small.min(axis=2), (5, 5), 0)
        otsu, _ = cv2.threshold(whiteness, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        k = max(3, int(round(min(sh, sw) * 0.01)) | 1)
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        rejected: list[str] = []
        best: np.ndarray | None = None
        # Otsu first; on a light background the cassette merges with it, so
        # then try stricter levels that only the (brighter) cassette passes.
        top = float(np.percentile(whiteness, 99.5))
        levels = [float(otsu)] + [float(v) for v in np.linspace(otsu, top, 7)[1:-1] if v > otsu + 4]
        for level in levels:
            _, mask = cv2.threshold(whiteness, level, 255, cv2.THRESH_BINARY)
            best = self._best_candidate(mask, kernel, rejected if level == levels[0] else [])
            if best is not None:
                break
        if best is None:
            why = f" (seen: {'; '.join(rejected[:3])})" if rejected else ""
            raise StripNotFoundError(
                "no test cassette found in the photo" + why + "; re-take the photo with the whole cassette in the frame, "
                "on a plain darker background, filling at least a third of the picture"
            )
        cnt = best
        x, y, bw, bh = cv2.boundingRect(cnt)
        if x <= 1 or y <= 1 or x + bw >= sw - 1 or y + bh >= sh - 1:
            raise StripNotFoundError(
                "the cassette touches the edge of the photo and may be cut off; re-take the photo with the whole "
                "cassette inside the frame"
            )
        corners = _quad_corners(cnt)
        if corners is None:
            raise StripNotFoundError(
                "the cassette's outline is not a clean rectangle (occluded or strongly tilted?); re-take the photo "
                "from straight above with nothing covering the cassette"
            )
        corners = (corners / scale).astype(np.float32)
        length = 0.5 * (float(np.linalg.norm(corners[1] - corners[0])) + float(np.linalg.norm(corners[2] - corners[3])))
        if length < _MIN_LENGTH_PX:
            raise StripLinesError(
                f"the cassette is only {length:.0f} px long in the photo (at least {_MIN_LENGTH_PX} needed to "
                "measure its lines); move the camera closer so the cassette fills a third or more of the frame"
            )
        return corners, geo

    def _best_candidate(self, mask: np.ndarray, kernel: np.ndarray, rejected: list[str]) -> np.ndarray | None:
        """The largest blob shaped like the cassette (aspect, fill), or None."""
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        image_area = float(mask.shape[0] * mask.shape[1])
        best: tuple[float, np.ndarray] | None = None
        want = 1.0 / self.design.aspect
        for cnt in contours:
            area = cv2.contourArea(cnt)
            if area < 0.004 * image_area:
                continue
            (_, _), (rw, rh), _ = cv2.minAreaRect(cnt)
            long_side, short_side = max(rw, rh), min(rw, rh)
            if short_side < 1:
                continue
            aspect = long_side / short_side
            solidity = area / (rw * rh)
            if not (0.7 * want <= aspect <= 1.35 * want) or solidity < 0.78:
                rejected.append(f"bright region of aspect {aspect:.1f}:1 and fill {solidity:.2f}")
                continue
            if best is None or area > best[0]:
                best = (area, cnt)
        return None if best is None else best[1]

    def _warp(self, bgr: np.ndarray, corners: np.ndarray) -> np.ndarray:
        L = _CANON_LEN
        H = int(round(L * self.design.aspect))
        dst = np.array([[0, 0], [L, 0], [L, H], [0, H]], np.float32)
        M = cv2.getPerspectiveTransform(corners, dst)
        return cv2.warpPerspective(bgr, M, (L, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    # -- step 2: which end is the sample end? --------------------------------------
    def _orient(self, lin: np.ndarray, geo: _Geometry) -> None:
        d = self.design
        L = lin.shape[1]
        lum = lin.mean(axis=2)

        def disc_mean(cx: float) -> float:
            yy, xx = np.mgrid[0 : lum.shape[0], 0 : lum.shape[1]]
            r = np.hypot(xx - cx * L, yy - d.well_center[1] * L)
            return float(lum[r < 0.75 * d.well_radius * L].mean())

        def plain_mean(cx: float) -> float:
            x0, x1 = int((cx - 0.04) * L), int((cx + 0.04) * L)
            y0, y1 = int(0.04 * L), int((d.aspect - 0.04) * L)
            return float(np.median(lum[y0:y1, x0:x1]))

        left = disc_mean(d.well_center[0]) / max(plain_mean(0.30), 1e-6)
        right = disc_mean(1.0 - d.well_center[0]) / max(plain_mean(0.70), 1e-6)
        if min(left, right) > 0.85 or abs(left - right) < 0.15:
            raise StripNotFoundError(
                "a white rectangle was found but no sample well at either end; this is not the expected test "
                "cassette, or the well is hidden: re-take the photo with the whole cassette visible"
            )
        if right < left:
            geo.upside_down = True
            geo.notes.append("cassette was upside down in the photo")

    # -- step 3: the window and its lines -------------------------------------------
    def _measure(self, body: np.ndarray, lin: np.ndarray, geo: _Geometry) -> StripReading:
        d = self.design
        L = lin.shape[1]
        # lin is RGB-reversed (BGR); mix to luma-weighted linear light
        light = lin @ _LUMA_RGB[::-1].astype(np.float32)
        wy0, wy1 = d.window_y
        ys0 = int(round((wy0 + 0.15 * (wy1 - wy0)) * L))
        ys1 = int(round((wy1 - 0.15 * (wy1 - wy0)) * L))

        # window edges: the rim shadow is the darkest column near each nominal edge
        col = light[ys0:ys1].mean(axis=0)
        col_s = np.convolve(col, np.ones(3) / 3, mode="same")
        edges = []
        for nominal in d.window_x:
            lo, hi = int((nominal - 0.025) * L), int((nominal + 0.025) * L)
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
        span = (x1 - x0) / ((d.window_x[1] - d.window_x[0]) * L)
        if not 0.9 < span < 1.1:
            raise StripLinesError(
                f"the test window measures {span:.2f} x its designed length, so the cassette's outline was "
                "misjudged; re-take the photo from straight above on a plain darker background"
            )

        def to_px(u: float) -> float:
            return x0 + (u - d.window_x[0]) / (d.window_x[1] - d.window_x[0]) * (x1 - x0)

        w_px = d.line_width * L * span
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
        prof = region.mean(axis=0).astype(np.float64)
        xs = np.arange(px0, px1, dtype=np.float64)
        t_nom, c_nom = to_px(d.t_x), to_px(d.c_x)

        # first baseline: the membrane's upper envelope (lines are dips)
        env_k = int(3 * w_px) | 1
        envelope = _running_percentile(prof, env_k, 90)
        absorb0 = 1.0 - prof / np.maximum(envelope, 1e-9)
        box = np.convolve(absorb0, np.ones(int(round(w_px))) / round(w_px), mode="same")

        def score_at(x: float) -> float:
            return float(np.interp(x, xs, box))

        max_shift = 0.012 * L
        shifts = np.arange(-max_shift, max_shift + 0.5, 1.0)
        scores = [score_at(t_nom + s) + score_at(c_nom + s) for s in shifts]
        shift = float(shifts[int(np.argmax(scores))])
        if max(scores) < 0.05:  # both lines faint: keep the design's positions
            shift = 0.0
        t_pos, c_pos = t_nom + shift, c_nom + shift
        if abs(shift) > 0.8 * max_shift:
            raise StripLinesError(
                f"the lines sit {shift / L:+.3f} of the cassette length away from where the design puts them; "
                "this is not the expected cassette or the photo is distorted: re-take it from straight above"
            )

        # refined baseline: quadratic through the membrane away from both lines
        keep = (np.abs(xs - t_pos) > 1.3 * w_px) & (np.abs(xs - c_pos) > 1.3 * w_px)
        if keep.sum() < 10:
            raise StripLinesError(
                "too little clean membrane around the lines to set a baseline; re-take the photo closer and sharper"
            )
        u = (xs - xs.mean()) / (float(np.ptp(xs)) or 1.0)
        sel_c = np.abs(xs - c_pos) <= 1.0 * w_px
        sel_t = np.abs(xs - t_pos) <= 1.0 * w_px
        scale = float(d.luma_absorption * w_px)

        def lines_in(profile: np.ndarray) -> tuple[float, float, float]:
            """C, T and the membrane noise of one profile, on its own fitted baseline."""
            coef = np.polyfit(u[keep], profile[keep], 2)
            absorb = 1.0 - profile / np.maximum(np.polyval(coef, u), 1e-9)
            return (float(absorb[sel_c].sum()) / scale, float(absorb[sel_t].sum()) / scale,
                    float(np.std(absorb[keep])))

        c, t, noise = lines_in(prof)
        if noise > _MAX_NOISE:
            raise StripLinesError(
                f"the membrane is too noisy or uneven to measure lines (noise {noise:.3f}); hold the camera still, "
                "add even light, clean the window and re-take the photo"
            )
        # The two halves of the window (along the lines) must agree: a shadow
        # edge or glare spot crossing the window makes them differ even when
        # the averaged profile looks clean.
        half = region.shape[0] // 2
        c_a, t_a, _ = lines_in(region[:half].mean(axis=0).astype(np.float64))
        c_b, t_b, _ = lines_in(region[half:].mean(axis=0).astype(np.float64))
        split = max(abs(c_a - c_b), abs(t_a - t_b))
        if split > _MAX_SPLIT:
            raise StripLinesError(
                f"the two halves of the test window read differently (by {split:.3f} in line intensity): a shadow "
                "edge or glare crosses the window; re-take the photo in even light without shadows or reflections"
            )
        c = max(0.0, c)
        t = max(0.0, t)
        ratio = t / c if c > 1e-6 else 0.0
        notes = list(geo.notes)
        verdict = judge(c, ratio, self.thresholds)
        if verdict is Judgement.INVALID:
            notes.append(f"control line C {c:.3f} is not above C_min {self.thresholds.c_min:.3f}: the card is invalid")
        confidence = (max(0.0, 1.0 - noise / _MAX_NOISE) * (1.0 - 0.5 * split / _MAX_SPLIT)
                      * (1.0 - 0.5 * abs(shift) / max_shift))
        if noise > 0.5 * _MAX_NOISE:
            notes.append(f"membrane noise {noise:.3f}: a sharper, better-lit photo would be more precise")
        return StripReading(c=c, t=t, t_over_c=ratio, judgement=verdict, thresholds=self.thresholds,
                            confidence=confidence, notes=tuple(notes))


# ---- helpers -------------------------------------------------------------
# Below this JPEG quality the block and chroma errors reach 0.04-0.05 in line
# intensity (simulated photos at quality 20-30); refuse rather than guess.
_MIN_JPEG_QUALITY = 40

# The IJG (libjpeg) luminance table at quality 50, the reference every common
# encoder scales; its sum lets us estimate the quality a photo was saved at.
_IJG_LUMA_SUM = sum((
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
))


def jpeg_quality_estimate(data: bytes) -> int | None:
    """The IJG-equivalent quality (1-100) of a JPEG's luminance table, or None if not a readable JPEG.

    Parses only the marker segments before the scan; never raises.
    """
    if len(data) < 4 or data[0:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no table seen
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > len(data):
            return None
        if marker == 0xDB:
            seg = data[pos + 4 : pos + 2 + length]
            i = 0
            while i < len(seg):
                precision, table_id = seg[i] >> 4, seg[i] & 0x0F
                size = 128 if precision else 64
                body = seg[i + 1 : i + 1 + size]
                if len(body) != size:
                    return None
                values = [int.from_bytes(body[k : k + 2], "big") for k in range(0, 128, 2)] if precision else list(body)
                if table_id == 0:
                    scale = 100.0 * sum(values) / _IJG_LUMA_SUM
                    quality = 5000.0 / scale if scale > 100 else (200.0 - scale) / 2.0
                    return int(round(min(100.0, max(1.0, quality))))
                i += 1 + size
        pos += 2 + length
    return None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise StripImageError(f"expected a numpy image array, got {type(image).__name__}; pass cv2.imread()'s result")
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise StripImageError(
            f"expected a colour image (height x width x 3, BGR), got shape {image.shape}; the gold lines are read "
            "from colour, so take a colour photo"
        )
    if image.shape[0] < 120 or image.shape[1] < 120:
        raise StripImageError(f"image of {image.shape[1]}x{image.shape[0]} px is too small; use at least 640x480")
    if image.dtype != np.uint8:
        raise StripImageError(f"expected 8-bit pixels, got {image.dtype}; convert with cv2.convertScaleAbs or save as JPEG")
    return np.ascontiguousarray(image[..., :3])


def _order_quad(pts: np.ndarray) -> np.ndarray:
    """Clockwise (image coordinates) from a corner that starts a long side."""
    pts = pts.reshape(4, 2).astype(np.float64)
    c = pts.mean(axis=0)
    ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])
    pts = pts[np.argsort(ang)]  # increasing angle = clockwise with y pointing down
    side = [np.linalg.norm(pts[(i + 1) % 4] - pts[i]) for i in range(4)]
    if side[0] + side[2] < side[1] + side[3]:
        pts = np.roll(pts, -1, axis=0)
    return pts.astype(np.float32)


def _quad_corners(cnt: np.ndarray) -> np.ndarray | None:
    hull = cv2.convexHull(cnt)
    peri = cv2.arcLength(hull, True)
    for eps in (0.01, 0.015, 0.02, 0.03, 0.04):
        approx = cv2.approxPolyDP(hull, eps * peri, True)
        if len(approx) == 4 and cv2.isContourConvex(approx):
            return _order_quad(approx)
    # rounded or chipped corners: the hull point furthest out towards each minAreaRect corner
    box = cv2.boxPoints(cv2.minAreaRect(cnt))
    centre = box.mean(axis=0)
    hp = hull.reshape(-1, 2).astype(np.float64)
    picked = []
    for corner in box:
        direction = corner - centre
        picked.append(hp[int(np.argmax(hp @ direction))])
    quad = np.array(picked, np.float32)
    if cv2.contourArea(quad) < 0.5 * cv2.contourArea(cnt):
        return None
    return _order_quad(quad)


def _running_percentile(values: np.ndarray, k: int, q: float) -> np.ndarray:
    half = k // 2
    padded = np.pad(values, half, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, k)
    return np.asarray(np.percentile(windows, q, axis=1), dtype=np.float64)


# ---- camera --------------------------------------------------------------
def capture_from(source: int | str | Path, *, warmup_frames: int = 0, timeout_s: float = 10.0) -> np.ndarray:
    """Grab one BGR frame from a camera index, a stream URL or a video/image file.

    ``warmup_frames`` frames are read and dropped first (webcams need a few to
    settle exposure). Opening and each read are bounded by ``timeout_s``
    (honoured by the FFmpeg and V4L2 back-ends) so an unreachable stream
    fails instead of hanging. The capture is always released.
    """
    target: int | str
    if isinstance(source, Path):
        target = str(source)
    elif isinstance(source, str) and source.isdigit():
        target = int(source)
    else:
        target = source
    looks_like_file = isinstance(target, str) and "://" not in target and "!" not in target  # not URL/pipeline
    if looks_like_file and not Path(str(target)).exists():
        raise StripCaptureError(f"video source {target} does not exist; check the file path or give a camera index")
    try:
        ms = max(1, int(timeout_s * 1000))
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(target, cv2.CAP_ANY, params)
    except cv2.error as exc:
        raise StripCaptureError(f"OpenCV could not open video source {target!r}: {exc}; check the device or URL") from exc
    try:
        if not cap.isOpened():
            raise StripCaptureError(
                f"cannot open video source {target!r}; check that the camera is plugged in and not used by another "
                "program, or that the URL/file is right"
            )
        frame = None
        for _ in range(max(0, warmup_frames) + 1):
            ok, frame = cap.read()
            if not ok or frame is None:
                raise StripCaptureError(
                    f"video source {target!r} opened but gave no frame; check the camera connection or that the "
                    "file holds video"
                )
        assert frame is not None
        return np.ascontiguousarray(frame)
    except cv2.error as exc:
        raise StripCaptureError(f"reading a frame from {target!r} failed: {exc}; re-connect the camera") from exc
    finally:
        cap.release()
