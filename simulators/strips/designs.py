r"""A second cassette photo generator: several cassette DESIGNS, drawn independently of the reader.

Why a second generator: ``render.py`` draws the one cassette the reader was first written for, so a
reader tuned on it can pass while failing on every other product. Here each design is described in
this module's own terms (body units, length 1.0 along the flow, sample end left) and nothing is
imported from ``drivers.strip_reader``: the reader's profile files are written separately, by hand,
from the numbers below, and the test compares the two (an honest test: the generator cannot lean on
the reader's geometry code).

Designs (window and lines in body units; lines as fractions of the window, sample end = 0)::

    duo-blue     light-blue body, no sample well, centred window 3.5:1, T 0.30 C 0.62, gold lines
    well-white   white body, round sample well, window near the far end 3.9:1, T 0.40 C 0.70, blue latex lines
    arrow-green  pale green body, printed arrow instead of a well, window 2.5:1, T 0.25 C 0.62, wide gold lines

Nuisances per photo: any rotation, perspective (corner jitter up to 6 % of the length), backgrounds
from a dark desk to a light table (brighter than the cassette), an illumination gradient, a soft
shadow across part of the photo, white balance 0.85..1.15 per channel, blur, sensor noise and JPEG
quality 40..95. Truth per photo: C, T, T/C and the judgement under the design's own thresholds, with
the margin of T/C from the nearest threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

__all__ = ["DESIGNS", "Design", "DesignPhoto", "design_photo", "render_design_jpeg"]

GAMMA = 2.2
GOLD = (0.30, 0.80, 0.55)
LATEX_BLUE = (0.75, 0.55, 0.15)


@dataclass(frozen=True)
class Design:
    """One product's cassette, in body units (length 1.0); lines as fractions of the window's length."""

    name: str
    aspect: float                       # body height / length
    body_rgb: tuple[float, float, float]
    window_x: tuple[float, float]
    window_y: tuple[float, float]
    line_t: float
    line_c: float
    line_width: float                   # fraction of the window's length
    line_rgb: tuple[float, float, float]  # linear light a line of intensity 1.0 absorbs
    mark: str                           # "well", "arrow" or "none": what sits at the sample end
    mark_x: float = 0.15
    mark_radius: float = 0.05
    thresholds: tuple[float, float, float] = (0.10, 0.70, 1.00)  # C_min, A, B: the manufacturer's cut-offs

    def judge(self, c: float, t: float) -> str:
        c_min, a, b = self.thresholds
        if round(c, 3) <= c_min:
            return "invalid"
        ratio = round(t / c, 3)
        return "positive" if ratio <= a else "negative" if ratio >= b else "suspicious"


DESIGNS: dict[str, Design] = {d.name: d for d in (
    Design("duo-blue", aspect=0.27, body_rgb=(0.55, 0.68, 0.82), window_x=(0.36, 0.64), window_y=(0.095, 0.175),
           line_t=0.30, line_c=0.62, line_width=0.06, line_rgb=GOLD, mark="none", thresholds=(0.12, 0.50, 0.80)),
    Design("well-white", aspect=0.25, body_rgb=(0.86, 0.86, 0.84), window_x=(0.52, 0.87), window_y=(0.08, 0.17),
           line_t=0.40, line_c=0.70, line_width=0.05, line_rgb=LATEX_BLUE, mark="well", mark_x=0.20,
           mark_radius=0.06, thresholds=(0.10, 0.80, 1.10)),
    Design("arrow-green", aspect=0.32, body_rgb=(0.70, 0.80, 0.66), window_x=(0.32, 0.60), window_y=(0.105, 0.215),
           line_t=0.25, line_c=0.62, line_width=0.08, line_rgb=GOLD, mark="arrow", mark_x=0.16,
           thresholds=(0.10, 0.60, 0.90)),
)}


@dataclass(frozen=True)
class DesignPhoto:
    """Everything that shapes one photo: the design, the truth and the nuisances (JSON-able)."""

    design: str
    c: float
    t: float
    width: int
    height: int
    length_px: float
    angle_deg: float
    center: tuple[float, float]
    jitter: tuple[tuple[float, float], ...]
    background_rgb: tuple[float, float, float]
    light_table: bool
    exposure: float
    gradient: float
    gradient_angle_deg: float
    shadow: tuple[float, float, float, float]  # angle, offset (px from centre), softness px, depth 0..1
    white_balance: tuple[float, float, float]
    rim_depth: float
    blur_sigma: float
    noise_sigma: float
    jpeg_quality: int
    seed: int

    @property
    def t_over_c(self) -> float:
        return self.t / self.c if self.c > 0 else 0.0

    def truth(self) -> dict[str, Any]:
        d = DESIGNS[self.design]
        c_min, a, b = d.thresholds
        margin = min(abs(self.t_over_c - a), abs(self.t_over_c - b)) if round(self.c, 3) > c_min else 1.0
        return {"design": self.design, "c": self.c, "t": self.t, "t_over_c": round(self.t_over_c, 6),
                "judgement": d.judge(self.c, self.t), "thresholds": {"c_min": c_min, "positive_max": a,
                                                                    "negative_min": b},
                "tc_margin": round(margin, 6), "c_margin": round(abs(self.c - c_min), 6), "render": asdict(self)}


def design_photo(design: str, seed: int, index: int, *, level: bool = False,
                 truth: tuple[float, float] | None = None) -> DesignPhoto:
    """Photo ``index`` of ``seed`` for ``design``: its truth drawn across the judgement range, then nuisances.

    ``level`` draws a calibration photo: sample end left, within 10 degrees of level, no shadow;
    ``truth`` gives its (C, T) instead of drawing them (a control card of known result)."""
    d = DESIGNS[design]
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, sum(map(ord, design))]))
    c_min, _, b = d.thresholds
    if rng.random() < 0.1:
        c, t = float(rng.uniform(0.0, 0.5 * c_min)), float(rng.uniform(0.0, 0.8))
    else:
        c = float(rng.uniform(0.35, 1.0))
        t = min(1.0, c * float(rng.uniform(0.0, 1.35 * b)))
    if truth is not None:
        c, t = truth
    width, height = [(1024, 768), (960, 720), (768, 1024), (1200, 900)][int(rng.integers(4))]
    short = min(width, height)
    length = float(rng.uniform(0.55, 0.85)) * short
    angle = float(rng.uniform(-10, 10)) if level else float(rng.uniform(0.0, 360.0))
    a = math.radians(angle)
    half_w = 0.5 * (abs(math.cos(a)) * length + abs(math.sin(a)) * length * d.aspect)
    half_h = 0.5 * (abs(math.sin(a)) * length + abs(math.cos(a)) * length * d.aspect)
    margin = 0.08 * short
    cx = float(rng.uniform(half_w + margin, max(half_w + margin, width - half_w - margin) + 1e-6))
    cy = float(rng.uniform(half_h + margin, max(half_h + margin, height - half_h - margin) + 1e-6))
    jit = float(rng.uniform(0.0, 0.06)) * length
    jitter = tuple((float(x), float(y)) for x, y in rng.uniform(-jit / 2, jit / 2, size=(4, 2)))
    light_table = bool(rng.random() < 0.3)
    bg = (tuple(float(v) for v in rng.uniform(0.93, 1.0, 3)) if light_table
          else tuple(float(v) for v in rng.uniform(0.5, 1.0, 3) * rng.uniform(0.05, 0.45)))
    shadow = ((float(rng.uniform(0, 360)), float(rng.uniform(-0.9, 0.9)) * length, float(rng.uniform(0.08, 0.3)) * length,
               0.0 if level or rng.random() < 0.4 else float(rng.uniform(0.2, 0.55))))
    return DesignPhoto(
        design=design, c=round(c, 4), t=round(t, 4), width=width, height=height, length_px=length, angle_deg=angle,
        center=(cx, cy), jitter=jitter, background_rgb=bg, light_table=light_table,  # type: ignore[arg-type]
        exposure=float(rng.uniform(0.62, 0.85)), gradient=float(rng.uniform(0.0, 0.35)),
        gradient_angle_deg=float(rng.uniform(0, 360)), shadow=shadow,
        white_balance=tuple(float(v) for v in rng.uniform(0.85, 1.15, 3)),  # type: ignore[arg-type]
        rim_depth=float(rng.uniform(0.25, 0.45)), blur_sigma=float(rng.uniform(0.4, 1.6)),
        noise_sigma=float(rng.uniform(0.003, 0.015)), jpeg_quality=int(rng.integers(40, 96)),
        seed=int(rng.integers(2**31 - 1)))


def _canvas(d: Design, p: DesignPhoto, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The cassette in its own frame at ``scale`` px per body unit: linear RGB and alpha."""
    w, h = int(round(scale)), int(round(scale * d.aspect))
    X, Y = np.meshgrid((np.arange(w, dtype=np.float32) + 0.5) / scale, (np.arange(h, dtype=np.float32) + 0.5) / scale)
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array(d.body_rgb, np.float32)
    r = 0.03
    dx = np.maximum(np.maximum(r - X, X - (1 - r)), 0)
    dy = np.maximum(np.maximum(r - Y, Y - (d.aspect - r)), 0)
    alpha = np.clip(0.5 - (np.hypot(dx, dy) - r) * scale, 0, 1).astype(np.float32)
    edge = np.minimum.reduce([X, 1 - X, Y, d.aspect - Y])
    img *= (1 - 0.15 * np.exp(-edge / 0.008))[..., None]
    cy_mid = 0.5 * (d.window_y[0] + d.window_y[1])
    if d.mark == "well":
        wd = np.hypot(X - d.mark_x, Y - cy_mid)
        img *= (1 - 0.5 * np.exp(-((wd - d.mark_radius) / 0.007) ** 2))[..., None]
        img[wd < d.mark_radius - 0.005] = np.array([0.50, 0.42, 0.36], np.float32)
    elif d.mark == "arrow":
        pts = np.array([[d.mark_x - 0.06, cy_mid - 0.045], [d.mark_x + 0.05, cy_mid], [d.mark_x - 0.06, cy_mid + 0.045]])
        ink = np.zeros((h, w), np.uint8)
        cv2.fillPoly(ink, [np.round(pts * scale).astype(np.int32)], 255, cv2.LINE_AA)
        img *= (1 - 0.6 * ink.astype(np.float32) / 255)[..., None]
    x0, x1 = d.window_x
    y0, y1 = d.window_y
    inside = (X >= x0) & (X <= x1) & (Y >= y0) & (Y <= y1)
    frame = np.minimum.reduce([np.abs(X - x0), np.abs(X - x1), np.abs(Y - y0), np.abs(Y - y1)])  # inside: to the rim
    outside = np.hypot(np.maximum(np.maximum(x0 - X, X - x1), 0), np.maximum(np.maximum(y0 - Y, Y - y1), 0))
    img[~inside] *= (1 - p.rim_depth * np.exp(-outside[~inside] / 0.004))[..., None]
    u = np.clip((X - x0) / (x1 - x0), 0, 1)
    line_rgb = np.array(d.line_rgb, np.float32)
    membrane = np.ones_like(img) * np.array([0.95, 0.95, 0.93], np.float32)
    membrane *= (1 - 0.02 * u)[..., None]
    membrane *= (1 - p.rim_depth * 0.8 * np.exp(-frame / 0.006))[..., None]
    for pos, intensity in ((d.line_t, p.t), (d.line_c, p.c)):
        if intensity > 0:
            prof = np.clip((d.line_width / 2 - np.abs(u - pos)) * (x1 - x0) / 0.003 + 0.5, 0, 1)
            membrane *= (1 - np.clip(intensity * prof, 0, 1)[..., None] * line_rgb)
    img[inside] = membrane[inside]
    labels = np.zeros((h, w), np.uint8)
    for text, pos in (("T", d.line_t), ("C", d.line_c)):
        x = x0 + pos * (x1 - x0) - 0.01
        cv2.putText(labels, text, (int(x * scale), int((y0 - 0.02) * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale / 800,
                    255, max(1, int(scale / 500)), cv2.LINE_AA)
    img *= (1 - 0.7 * labels.astype(np.float32) / 255)[..., None]
    img *= (1 + 0.01 * cv2.resize(rng.normal(0, 1, (6, 20)).astype(np.float32), (w, h)))[..., None]
    return np.clip(img, 0, 1), alpha


def render_design(p: DesignPhoto) -> np.ndarray:
    """One photo before compression: 8-bit BGR."""
    d = DESIGNS[p.design]
    rng = np.random.default_rng(p.seed)
    h, w = p.height, p.width
    coarse = cv2.resize(rng.normal(0, 1, (6, 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    scene = np.array(p.background_rgb, np.float32)[None, None, :] * (1 + (0.02 if p.light_table else 0.15) * coarse)[..., None]
    scale = 2.0 * p.length_px
    canvas, alpha = _canvas(d, p, scale, rng)
    canvas, alpha = cv2.GaussianBlur(canvas, (0, 0), 1.0), cv2.GaussianBlur(alpha, (0, 0), 1.0)
    ch, cw = alpha.shape
    L, H = p.length_px, p.length_px * d.aspect
    a = math.radians(p.angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    local = np.array([[-L / 2, -H / 2], [L / 2, -H / 2], [L / 2, H / 2], [-L / 2, H / 2]])
    dst = (local @ rot.T + np.array(p.center) + np.array(p.jitter)).astype(np.float32)
    M = cv2.getPerspectiveTransform(np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], np.float32), dst)
    warped = cv2.warpPerspective(canvas, M, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpPerspective(alpha, M, (w, h), flags=cv2.INTER_LINEAR)
    drop = cv2.GaussianBlur(cv2.warpAffine(mask, np.array([[1, 0, 5], [0, 1, 7]], np.float32), (w, h)), (0, 0), 7)
    scene *= (1 - (0.25 if p.light_table else 0.5) * drop)[..., None]
    scene += (warped - scene) * mask[..., None]
    xs = np.arange(w, dtype=np.float32) - w / 2
    ys = np.arange(h, dtype=np.float32)[:, None] - h / 2
    ga = math.radians(p.gradient_angle_deg)
    light = p.exposure * (1 - p.gradient * ((xs * math.cos(ga) + ys * math.sin(ga)) / math.hypot(w, h) + 0.5))
    if p.light_table:  # the table glows: its own light, less the cassette's shade
        light = light * (1 - 0.15 * mask)
    sa, off, soft, depth = p.shadow
    if depth > 0:
        dist = (xs - (p.center[0] - w / 2)) * math.cos(math.radians(sa)) + (ys - (p.center[1] - h / 2)) * math.sin(math.radians(sa)) - off
        light = light * (1 - depth / (1 + np.exp(dist / soft)))
    img = scene * np.asarray(light, np.float32)[..., None] * np.array(p.white_balance, np.float32)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), p.blur_sigma)
    img += rng.standard_normal(img.shape, dtype=np.float32) * p.noise_sigma
    img = np.clip(img, 0, 1) ** (1 / GAMMA) * 255 + 0.5
    return cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2BGR)


def render_design_jpeg(p: DesignPhoto) -> bytes:
    """One photo as the camera's JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", render_design(p), [cv2.IMWRITE_JPEG_QUALITY, p.jpeg_quality])
    if not ok:  # pragma: no cover - cv2 always encodes a valid uint8 array
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf)
