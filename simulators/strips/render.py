r"""Synthetic photos of a colloidal-gold test cassette with KNOWN line intensities.

Why a renderer and not stock photos: the reader's accuracy must be measured
against ground truth, and only a photo we drew ourselves has one. Every
nuisance a phone or desk camera adds is drawn on purpose and recorded in the
side-car JSON (``render`` key), so a failing case can be re-drawn exactly from
``(seed, index)``.

Cassette design (the reader relies on it; body units, length 1.0 along the
long axis, the sample end on the left)::

    x=0        0.15        0.42   0.52   0.62   0.72            1.0
    +--------------------------------------------------------------+  y=0
    |   S        ___       +--------T------C------+                |
    |          /     \     |        |      |      |   window:      |
    |         | well  |    |        |      |      |   y 0.095-0.195|
    |          \_____/     +--------|------|------+                |
    +--------------------------------------------------------------+  y=0.29
      sample well (dark,      T = test line (nearer the sample),
      sample-stained pad)     C = control line (further along the flow)

The sample well at one end makes the cassette asymmetric, so a photo taken
upside down (any rotation 0-360 deg) can be turned back: the control line is
the one further from the well.

Intensity scale (shared with ``drivers.strip_reader``, which imports nothing
from here): a line of intensity ``i`` in 0..1 multiplies the membrane's
linear-light reflectance, channel by channel, by ``1 - i * GOLD_ABSORPTION``;
the green channel, where colloidal gold absorbs most, loses ``0.80 * i``. The
line is ``LINE_WIDTH`` body units wide (soft edges that keep that equivalent
width). The camera is sRGB-like: optics blur and sensor noise act on linear
light, then gamma 1/2.2, 8-bit quantisation and JPEG compression.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "BODY_ASPECT",
    "DEFAULT_THRESHOLDS",
    "GOLD_ABSORPTION",
    "LINE_WIDTH",
    "RenderParams",
    "StripTruth",
    "judge",
    "random_params",
    "cassette_corners",
    "render",
    "render_jpeg",
]

# ---- the cassette design (body units; see the module docstring) ----------
BODY_ASPECT = 0.29  # height / length
WINDOW_X = (0.42, 0.72)
WINDOW_Y = (0.095, 0.195)
T_LINE_X = 0.52
C_LINE_X = 0.62
LINE_WIDTH = 0.022
WELL_CENTER = (0.15, 0.145)
WELL_RADIUS = 0.055
CORNER_RADIUS = 0.02

# Fraction of linear light a full-intensity (1.0) line absorbs, per channel
# in R, G, B order: reddish purple absorbs green most.
GOLD_ABSORPTION = (0.30, 0.80, 0.55)
GAMMA = 2.2

# Default judgement thresholds on T/C (the competitive assay: a weak T line
# means more analyte). Kept equal to drivers.strip_reader's defaults; a test
# compares the two.
DEFAULT_THRESHOLDS: dict[str, float] = {"c_min": 0.10, "positive_max": 0.70, "negative_min": 1.00}


def judge(c: float, t: float, thresholds: dict[str, float] | None = None) -> str:
    """The protocol's judgement (docs/protocols/rapidtest-astm.md §6) on values rounded to 3 decimals."""
    th = thresholds or DEFAULT_THRESHOLDS
    c3 = round(c, 3)
    if c3 <= th["c_min"]:
        return "invalid"
    ratio = round(t / c, 3)
    if ratio <= th["positive_max"]:
        return "positive"
    if ratio >= th["negative_min"]:
        return "negative"
    return "suspicious"


@dataclass(frozen=True)
class StripTruth:
    """What the photo really shows: the ground truth written beside each JPEG."""

    c: float
    t: float

    @property
    def t_over_c(self) -> float:
        return self.t / self.c if self.c > 0 else 0.0

    def format(self) -> str:
        return f"C:{self.c:.3f}  T:{self.t:.3f}  T/C:{self.t_over_c:.3f}"


@dataclass(frozen=True)
class RenderParams:
    """Every choice that shapes one photo; with the truth it re-draws the photo exactly."""

    width: int
    height: int
    length_px: float            # cassette length in the photo (before perspective jitter)
    angle_deg: float            # rotation of the cassette's long axis, 0-360
    center: tuple[float, float]  # cassette centre in the photo
    corner_jitter: tuple[tuple[float, float], ...]  # perspective: per-corner offsets, px
    background_rgb: tuple[float, float, float]  # linear reflectance
    background_texture: float
    body_rgb: tuple[float, float, float]
    membrane_tint: tuple[float, float]  # faint background gold at the left / right window edge
    exposure: float
    gradient: float             # illumination falls by this fraction across the photo
    gradient_angle_deg: float
    vignette: float             # illumination falls by this fraction at the corners
    white_balance: tuple[float, float, float]
    blur_sigma: float           # px, optics
    noise_sigma: float          # linear light, sensor
    jpeg_quality: int
    texture_seed: int
    show_cassette: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def random_params(rng: np.random.Generator, *, show_cassette: bool = True) -> RenderParams:
    """Draw the nuisances for one photo (ranges a hand-held phone or desk camera produces)."""
    width, height = [(800, 600), (960, 720), (1024, 768), (720, 960)][int(rng.integers(4))]
    short = min(width, height)
    length = float(rng.uniform(0.55, 0.82)) * short
    angle = float(rng.uniform(0.0, 360.0))
    # where the rotated cassette still fits with a margin
    half_w = 0.5 * (abs(math.cos(math.radians(angle))) * length + abs(math.sin(math.radians(angle))) * length * BODY_ASPECT)
    half_h = 0.5 * (abs(math.sin(math.radians(angle))) * length + abs(math.cos(math.radians(angle))) * length * BODY_ASPECT)
    margin = 0.06 * short
    cx = float(rng.uniform(half_w + margin, max(half_w + margin, width - half_w - margin) + 1e-6))
    cy = float(rng.uniform(half_h + margin, max(half_h + margin, height - half_h - margin) + 1e-6))
    jitter_scale = float(rng.uniform(0.0, 0.03)) * length
    jitter = tuple((float(a), float(b)) for a, b in rng.normal(0.0, jitter_scale / 2.0, size=(4, 2)).clip(-jitter_scale, jitter_scale))
    hue = rng.uniform(0.5, 1.0, size=3)
    bg = tuple(float(v) for v in hue * rng.uniform(0.06, 0.30))
    body_level = float(rng.uniform(0.80, 0.90))
    body = tuple(float(body_level * v) for v in rng.uniform(0.97, 1.0, size=3))
    return RenderParams(
        width=width, height=height, length_px=length, angle_deg=angle, center=(cx, cy),
        corner_jitter=jitter, background_rgb=bg,  # type: ignore[arg-type]
        background_texture=float(rng.uniform(0.0, 0.25)),
        body_rgb=body,  # type: ignore[arg-type]
        membrane_tint=(float(rng.uniform(0.0, 0.05)), float(rng.uniform(0.0, 0.03))),
        exposure=float(rng.uniform(0.75, 0.95)),
        gradient=float(rng.uniform(0.0, 0.35)),
        gradient_angle_deg=float(rng.uniform(0.0, 360.0)),
        vignette=float(rng.uniform(0.0, 0.30)),
        white_balance=tuple(float(v) for v in rng.uniform(0.95, 1.04, size=3)),  # type: ignore[arg-type]
        blur_sigma=float(rng.uniform(0.3, 1.8)),
        noise_sigma=float(rng.uniform(0.003, 0.02)),
        jpeg_quality=int(rng.integers(60, 96)),
        texture_seed=int(rng.integers(2**31 - 1)),
        show_cassette=show_cassette,
    )


def _cassette_canvas(truth: StripTruth, params: RenderParams, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The cassette in its own frame, ``scale`` px per body unit: linear RGB and an alpha mask."""
    w = int(round(scale))
    h = int(round(scale * BODY_ASPECT))
    xs = (np.arange(w, dtype=np.float32) + 0.5) / scale
    ys = (np.arange(h, dtype=np.float32) + 0.5) / scale
    X, Y = np.meshgrid(xs, ys)

    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array(params.body_rgb, np.float32)
    # faint moulding texture on the plastic
    tex = cv2.resize(rng.normal(0, 1, size=(8, 24)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img *= (1.0 + 0.01 * tex)[..., None]

    # rounded-corner body mask
    r = CORNER_RADIUS
    dx = np.maximum(np.maximum(r - X, X - (1.0 - r)), 0)
    dy = np.maximum(np.maximum(r - Y, Y - (BODY_ASPECT - r)), 0)
    dist_out = np.sqrt(dx * dx + dy * dy) - r
    alpha = np.clip(0.5 - dist_out * scale, 0, 1).astype(np.float32)
    # darker bevel along the outer edge
    edge = np.minimum.reduce([X, 1.0 - X, Y, BODY_ASPECT - Y])
    img *= (1.0 - 0.12 * np.exp(-edge / 0.006))[..., None]

    def crop(ux0: float, ux1: float, uy0: float, uy1: float) -> tuple[slice, slice]:
        return (slice(max(0, int(uy0 * scale)), min(h, int(math.ceil(uy1 * scale)) + 1)),
                slice(max(0, int(ux0 * scale)), min(w, int(math.ceil(ux1 * scale)) + 1)))

    # sample well: a dark rim and a sample-stained pad
    m = WELL_RADIUS + 0.03
    sl = crop(WELL_CENTER[0] - m, WELL_CENTER[0] + m, WELL_CENTER[1] - m, WELL_CENTER[1] + m)
    cx, cy, cimg = X[sl], Y[sl], img[sl]
    wd = np.hypot(cx - WELL_CENTER[0], cy - WELL_CENTER[1])
    rim = np.exp(-((wd - WELL_RADIUS) / 0.006) ** 2)
    cimg *= (1.0 - 0.55 * rim)[..., None]
    inside = wd < WELL_RADIUS - 0.004
    cimg[inside] = np.array([0.55, 0.45, 0.38], np.float32) * (1.0 - 0.3 * np.exp(-(WELL_RADIUS - wd[inside]) / 0.01))[..., None]

    # window: membrane with a faint gold tint gradient along the flow, rim shadow
    x0, x1 = WINDOW_X
    y0, y1 = WINDOW_Y
    sl = crop(x0 - 0.012, x1 + 0.012, y0 - 0.012, y1 + 0.012)
    cx, cy, cimg = X[sl], Y[sl], img[sl]
    in_win = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
    frame_d = np.minimum.reduce([np.abs(cx - x0), np.abs(cx - x1), np.abs(cy - y0), np.abs(cy - y1)])
    cimg[~in_win] *= (1.0 - 0.45 * np.exp(-frame_d[~in_win] / 0.004))[..., None]
    gold = np.array(GOLD_ABSORPTION, np.float32)
    u = np.clip((cx - x0) / (x1 - x0), 0, 1)
    tint = params.membrane_tint[0] * (1 - u) + params.membrane_tint[1] * u
    membrane = np.array([0.96, 0.96, 0.95], np.float32) * (1.0 - tint[..., None] * gold)
    shadow = 1.0 - 0.35 * np.exp(-frame_d / 0.006)
    membrane = membrane * shadow[..., None]

    # the lines: soft-edged bars whose equivalent width is exactly LINE_WIDTH
    cys = cy[:, 0]
    rows = (cys >= y0) & (cys <= y1)
    for pos, intensity in ((T_LINE_X, truth.t), (C_LINE_X, truth.c)):
        if intensity <= 0:
            continue
        edge_w = 0.003
        prof = np.clip((LINE_WIDTH / 2 - np.abs(cx - pos)) / edge_w + 0.5, 0, 1)
        # slight unevenness along the line, averaging to exactly 1 over the window's rows
        along = cv2.resize(rng.normal(0, 1, size=(6, 1)).astype(np.float32), (1, len(cys)), interpolation=cv2.INTER_CUBIC)[:, 0]
        along = 1.0 + 0.03 * (along - along[rows].mean())
        strength = np.clip(intensity * prof * along[:, None], 0, 1)
        membrane = membrane * (1.0 - strength[..., None] * gold)
    cimg[in_win] = membrane[in_win]

    # printed labels: "S" by the well, "T" and "C" above the window
    canvas8 = np.zeros((h, w), np.uint8)
    font_scale = scale / 700.0
    thick = max(1, int(round(scale / 400)))
    for text, x in (("S", WELL_CENTER[0] + WELL_RADIUS + 0.02), ("T", T_LINE_X - 0.008), ("C", C_LINE_X - 0.008)):
        y = WELL_CENTER[1] + 0.01 if text == "S" else y0 - 0.025
        cv2.putText(canvas8, text, (int(x * scale), int(y * scale)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, 255, thick, cv2.LINE_AA)
    ink = canvas8.astype(np.float32)[..., None] / 255.0
    img = img * (1.0 - 0.7 * ink)
    return np.clip(img, 0, 1), alpha


def _background(params: RenderParams, rng: np.random.Generator) -> np.ndarray:
    h, w = params.height, params.width
    base = np.array(params.background_rgb, np.float32)
    coarse = cv2.resize(rng.normal(0, 1, size=(6, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    grain_y = np.sin(np.linspace(0, float(rng.uniform(20, 60)), h, dtype=np.float32) + coarse[:, :1].ravel() * 2)
    tex = 0.6 * coarse + 0.4 * grain_y[:, None]
    bg = base[None, None, :] * (1.0 + params.background_texture * tex)[..., None]
    return np.asarray(np.clip(bg, 0, 1), dtype=np.float32)


def cassette_corners(params: RenderParams) -> np.ndarray:
    """Where the cassette's corners land in the photo (TL, TR, BR, BL of the cassette frame)."""
    L = params.length_px
    H = L * BODY_ASPECT
    local = np.array([[-L / 2, -H / 2], [L / 2, -H / 2], [L / 2, H / 2], [-L / 2, H / 2]], np.float64)
    a = math.radians(params.angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = local @ rot.T + np.array(params.center)
    return np.asarray(pts + np.array(params.corner_jitter), dtype=np.float32)


def render(truth: StripTruth, params: RenderParams) -> np.ndarray:
    """Draw one photo before compression: an 8-bit BGR image (OpenCV's channel order)."""
    rng = np.random.default_rng(params.texture_seed)
    scene = _background(params, rng)
    h, w = params.height, params.width
    if params.show_cassette:
        scale = 2.0 * params.length_px  # render at 2x and let the warp filter it down
        canvas, alpha = _cassette_canvas(truth, params, scale, rng)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 1.0)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 1.0)
        ch, cw = alpha.shape
        src = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32)
        dst = cassette_corners(params)
        # work only in the cassette's bounding box (plus room for its shadow)
        bx0, by0 = np.floor(dst.min(axis=0)).astype(int) - 40
        bx1, by1 = np.ceil(dst.max(axis=0)).astype(int) + 40
        bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
        bw, bh = bx1 - bx0, by1 - by0
        M = cv2.getPerspectiveTransform(src, dst - np.array([bx0, by0], np.float32))
        warped = cv2.warpPerspective(canvas, M, (bw, bh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        mask = cv2.warpPerspective(alpha, M, (bw, bh), flags=cv2.INTER_LINEAR, borderValue=0)
        # soft drop shadow under the cassette
        shadow = cv2.GaussianBlur(cv2.warpAffine(mask, np.array([[1, 0, 6], [0, 1, 8]], np.float32), (bw, bh)), (0, 0), 8)
        roi = scene[by0:by1, bx0:bx1]
        roi *= (1.0 - 0.5 * shadow)[..., None]
        roi += (warped - roi) * mask[..., None]

    # illumination: exposure x linear gradient x vignette x white balance
    xs = np.arange(w, dtype=np.float32) - w / 2
    ys = np.arange(h, dtype=np.float32)[:, None] - h / 2
    ga = math.radians(params.gradient_angle_deg)
    proj = (xs * math.cos(ga) + ys * math.sin(ga)) / math.hypot(w, h)  # -0.5..0.5
    light = params.exposure * (1.0 - params.gradient * (proj + 0.5))
    r2 = (xs * xs + ys * ys) / ((w / 2) ** 2 + (h / 2) ** 2)
    light *= 1.0 - params.vignette * r2
    img: npt.NDArray[np.float32] = np.asarray(scene * light[..., None], dtype=np.float32)
    img *= np.array(params.white_balance, np.float32)

    # camera: optics blur, sensor noise (linear light), gamma, 8 bits
    img = np.asarray(cv2.GaussianBlur(img, (0, 0), params.blur_sigma), dtype=np.float32)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= params.noise_sigma
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img = np.asarray(cv2.pow(img, 1.0 / GAMMA), dtype=np.float32)
    img *= 255.0
    img += 0.5
    return cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2BGR)


def render_jpeg(truth: StripTruth, params: RenderParams) -> bytes:
    """Draw one photo and compress it as the camera would: the bytes of a JPEG file."""
    ok, buf = cv2.imencode(".jpg", render(truth, params), [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
    if not ok:  # pragma: no cover - cv2 always encodes a valid uint8 array
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf)

