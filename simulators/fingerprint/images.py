"""Synthetic fingerprints and the simulator's stand-in for a feature extractor.

Why synthetic: tests and demos need finger images that behave like real
ones (ridges, a core, varying quality, the same finger twice looks alike,
two fingers differ) without shipping anyone's biometrics.

How a finger is made (SFinGe-like, much simplified):

1. An orientation field from the Sherlock–Monro zero-pole model:
   θ(z) = ½·(Σ arg(z − core_i) − Σ arg(z − delta_j)) + a gentle global bend.
   Arches have no singular points, loops one core and one delta, whorls two
   of each. Positions, ridge period (8–11 px) and bends come from a
   ``random.Random(finger_id)``-style generator, so a finger id is a finger.
2. Ridges grow from white noise by repeatedly filtering with a bank of
   Gabor filters tuned to the local orientation and period, then squashing
   (tanh). This yields continuous ridges with natural minutiae.
3. Each *press* crops the master print with a small shift and rotation,
   masks it with an elliptical contact area, and degrades it by ``quality``
   (0..1): blur, contrast loss, dry blotches and sensor noise.

Templates (``TEMPLATE_BYTES`` = 512, the ZFM char-file size)::

    off 0  4  "EGWT"  magic
        4  1  version (2)
        5  1  blocks across (8)       6  1  blocks down (9)
        7  1  quality estimate 0..100
        8  72  one byte per 32×32 block: ridge angle 0..179 degrees,
               255 = background / no clear ridge flow
       80  392 the central 56×56 pixels binarised (1 = ridge), packed 8 per byte
      472  40  zero padding

Matching (:func:`match_score`) first asks that the ridge flow broadly
agrees, then looks for the best alignment of the two central ridge maps;
the correlation becomes a score in 0..300 like the modules' "accuracy
score". Flow alone is not enough: loops of different fingers have similar
flow, but their ridge maps do not line up.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

from firmware_bridge.r30x import IMAGE_HEIGHT, IMAGE_WIDTH, TEMPLATE_BYTES

__all__ = [
    "FingerSpec",
    "finger_spec",
    "master_print",
    "render_press",
    "blank_sensor",
    "extract_template",
    "parse_template",
    "merge_templates",
    "match_score",
    "TEMPLATE_MAGIC",
    "BLOCK",
    "MATCH_THRESHOLD",
]

TEMPLATE_MAGIC: Final = b"EGWT"
BLOCK: Final = 32
BLOCKS_X: Final = IMAGE_WIDTH // BLOCK  # 8
BLOCKS_Y: Final = IMAGE_HEIGHT // BLOCK  # 9
PATCH: Final = 56  # side of the central ridge map kept in a template (1 bit per pixel)
PROBE: Final = 32  # side of the part of one ridge map searched for in the other
MATCH_THRESHOLD: Final = 80  # scores at or above this count as "same finger"
_MARGIN: Final = 40  # master prints are larger than the sensor so presses can shift and rotate
_BACKGROUND: Final = 235


@dataclass(frozen=True)
class FingerSpec:
    """The identity of one synthetic finger: singular points, ridge period and bend."""

    finger_id: int
    pattern: str  # "arch" | "loop" | "whorl"
    cores: tuple[tuple[float, float], ...]
    deltas: tuple[tuple[float, float], ...]
    period: float  # ridge period in pixels
    bend: float  # amplitude of a smooth global orientation bend, radians
    bend_phase: float
    seed: int


def finger_spec(finger_id: int) -> FingerSpec:
    """Derive a finger deterministically from its id."""
    rng = np.random.default_rng([0x5EED, finger_id])
    w, h = IMAGE_WIDTH + 2 * _MARGIN, IMAGE_HEIGHT + 2 * _MARGIN
    cx = w / 2 + rng.uniform(-30, 30)
    cy = h * 0.42 + rng.uniform(-30, 30)
    pattern = ("arch", "loop", "loop", "whorl", "whorl")[int(rng.integers(0, 5))]
    cores: tuple[tuple[float, float], ...]
    deltas: tuple[tuple[float, float], ...]
    if pattern == "arch":
        cores, deltas = (), ()
    elif pattern == "loop":
        side = rng.choice([-1.0, 1.0])
        cores = ((cx, cy),)
        deltas = ((cx + side * rng.uniform(50, 90), cy + rng.uniform(90, 130)),)
    else:
        sep = rng.uniform(8, 22)
        cores = ((cx - sep, cy - sep / 2), (cx + sep, cy + sep / 2))
        deltas = ((cx - rng.uniform(80, 110), cy + rng.uniform(90, 130)),
                  (cx + rng.uniform(80, 110), cy + rng.uniform(90, 130)))
    return FingerSpec(
        finger_id=finger_id,
        pattern=pattern,
        cores=cores,
        deltas=deltas,
        period=float(rng.uniform(8.0, 11.0)),
        bend=float(rng.uniform(0.15, 0.5)),
        bend_phase=float(rng.uniform(0, 2 * math.pi)),
        seed=int(rng.integers(0, 2**31)),
    )


def _orientation_field(spec: FingerSpec, w: int, h: int) -> npt.NDArray[np.float64]:
    """Ridge orientation in radians (0..π) at every pixel (Sherlock–Monro zero-pole model)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    z = x + 1j * y
    theta = np.zeros((h, w))
    for cx, cy in spec.cores:
        theta += np.angle(z - (cx + 1j * cy))
    for dx, dy in spec.deltas:
        theta -= np.angle(z - (dx + 1j * dy))
    theta *= 0.5
    if spec.pattern == "arch":
        # arches: ridges run across the finger and hump in the middle
        theta += spec.bend * 1.5 * np.sin((x / w) * 2 * math.pi + spec.bend_phase) * np.exp(-((y - h * 0.5) / (h * 0.35)) ** 2)
    else:
        theta += spec.bend * 0.3 * np.sin((x / w + y / h) * math.pi + spec.bend_phase)
    return np.mod(theta, math.pi)


@functools.lru_cache(maxsize=32)
def master_print(finger_id: int) -> npt.NDArray[np.float32]:
    """The ideal ridge pattern of a finger, values −1 (valley) … +1 (ridge), larger than the sensor."""
    spec = finger_spec(finger_id)
    w, h = IMAGE_WIDTH + 2 * _MARGIN, IMAGE_HEIGHT + 2 * _MARGIN
    # grow the ridges at half resolution (8× less work), then upsample smoothly
    sw, sh = w // 2, h // 2
    period = spec.period / 2
    half = FingerSpec(spec.finger_id, spec.pattern, tuple((x / 2, y / 2) for x, y in spec.cores),
                      tuple((x / 2, y / 2) for x, y in spec.deltas), period, spec.bend, spec.bend_phase, spec.seed)
    theta = _orientation_field(half, sw, sh)
    rng = np.random.default_rng(spec.seed)
    img = rng.standard_normal((sh, sw)).astype(np.float32)
    n_orient = 16
    bins = (np.round(theta / math.pi * n_orient).astype(int)) % n_orient
    masks = [bins == k for k in range(n_orient)]
    ksize = int(2 * round(period * 1.2) + 1)
    kernels = []
    for k in range(n_orient):
        # Gabor kernel whose wave runs across the ridges (perpendicular to ridge direction)
        ang = k * math.pi / n_orient + math.pi / 2
        gabor = np.asarray(cv2.getGaborKernel((ksize, ksize), period * 0.45, ang, period, 1.0, 0,
                                              ktype=cv2.CV_32F), dtype=np.float32)
        gabor = gabor - gabor.mean()
        kern = (gabor / np.abs(gabor).sum()).astype(np.float32)
        kernels.append(kern)
    for _ in range(6):
        out = np.zeros_like(img)
        for kern, mask in zip(kernels, masks):
            filtered = cv2.filter2D(img, cv2.CV_32F, kern, borderType=cv2.BORDER_REFLECT)
            out[mask] = filtered[mask]
        std = float(out.std()) or 1.0
        img = np.tanh(2.5 * out / std).astype(np.float32)
    big = cv2.resize(img, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.asarray(np.tanh(2.0 * big), dtype=np.float32)


def blank_sensor(seed: int = 0) -> npt.NDArray[np.uint8]:
    """What the sensor sees with no finger: bright background and a little noise."""
    rng = np.random.default_rng([0xB1A4, seed])
    noise = rng.normal(0, 3, (IMAGE_HEIGHT, IMAGE_WIDTH))
    return np.clip(_BACKGROUND + noise, 0, 255).astype(np.uint8)


def render_press(finger_id: int, quality: float = 0.9, press: int = 0) -> npt.NDArray[np.uint8]:
    """One impression of ``finger_id`` as the sensor would see it (288 × 256, dark ridges).

    ``quality`` 1.0 is a perfect press; 0.0 is a smudge. ``press`` seeds the
    per-press variation (placement, rotation, noise), so press 0 and press 1
    of the same finger differ a little, as on real hardware.
    """
    q = min(1.0, max(0.0, float(quality)))
    rng = np.random.default_rng([0x9E55, finger_id, press])
    master = master_print(finger_id)
    h, w = master.shape
    # placement: small rotation and shift, then crop the sensor window
    angle = rng.uniform(-4, 4)
    shift_x, shift_y = rng.uniform(-6, 6, size=2)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    rot[0, 2] += shift_x - _MARGIN
    rot[1, 2] += shift_y - _MARGIN
    ridges = cv2.warpAffine(master, rot, (IMAGE_WIDTH, IMAGE_HEIGHT), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    # contact area: an ellipse with soft edges
    y, x = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH].astype(np.float32)
    ex = IMAGE_WIDTH / 2 + rng.uniform(-10, 10)
    ey = IMAGE_HEIGHT / 2 + rng.uniform(-8, 12)
    rx = IMAGE_WIDTH * rng.uniform(0.40, 0.46)
    ry = IMAGE_HEIGHT * rng.uniform(0.44, 0.50)
    r = ((x - ex) / rx) ** 2 + ((y - ey) / ry) ** 2
    contact = np.clip((1.15 - r) / 0.25, 0.0, 1.0)
    # degradations grow as quality falls
    blur = (1.0 - q) * 4.0
    if blur > 0.3:
        ridges = cv2.GaussianBlur(ridges, (0, 0), blur)
    if q < 0.8:  # dry / smudged blotches where ridges vanish
        blur_noise = cv2.GaussianBlur(rng.standard_normal((IMAGE_HEIGHT, IMAGE_WIDTH)).astype(np.float32), (0, 0), 14)
        blot = np.asarray(blur_noise, dtype=np.float32) / (float(np.abs(blur_noise).max()) or 1.0)
        ridges = ridges * np.clip(1.0 - (0.8 - q) * 3.0 * np.maximum(blot, 0) * 2.0, 0.0, 1.0)
    contrast = 0.35 + 0.65 * q
    grey = _BACKGROUND - contact * (95.0 + 85.0 * contrast * ridges)
    noise_sigma = 3.0 + (1.0 - q) * 70.0
    grey = grey + rng.normal(0, noise_sigma, grey.shape)
    return np.asarray(np.clip(grey, 0, 255), dtype=np.uint8)


# -- templates ------------------------------------------------------------------
def _block_orientation(image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], int]:
    """Per 32×32 block: ridge angle (radians, 0..π), a foreground mask, and a quality estimate."""
    img = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.0)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)

    def blocks(a: npt.NDArray[np.float32], size: int) -> npt.NDArray[np.float32]:
        return a.reshape(IMAGE_HEIGHT // size, size, IMAGE_WIDTH // size, size)

    def blocksum(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return np.asarray(blocks(a, BLOCK).sum(axis=(1, 3)), dtype=np.float64)

    gxx, gyy, gxy = blocksum(gx * gx), blocksum(gy * gy), blocksum(gx * gy)
    coherence = np.sqrt((gxx - gyy) ** 2 + 4 * gxy ** 2) / (gxx + gyy + 1e-9)
    # the gradient runs across the ridges; the ridge angle is perpendicular to it
    angle = np.mod(0.5 * np.arctan2(2 * gxy, gxx - gyy) + math.pi / 2, math.pi)
    grey = image.astype(np.float32)
    std = blocks(grey, BLOCK).std(axis=(1, 3))
    mean = blocks(grey, BLOCK).mean(axis=(1, 3))
    foreground = (std > 12) & (mean < _BACKGROUND - 20) & (coherence > 0.3)
    area = float(foreground.mean())
    q = 0.0 if not foreground.any() else float(coherence[foreground].mean()) * min(1.0, area / 0.45)
    return angle, foreground, int(round(100 * min(1.0, q / 0.8)))


def _ridge_patch(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The central PATCH×PATCH pixels binarised: 1 where a ridge (darker than its surroundings)."""
    img = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 1.5)
    local = cv2.GaussianBlur(img, (0, 0), 6.0)
    y0 = (IMAGE_HEIGHT - PATCH) // 2
    x0 = (IMAGE_WIDTH - PATCH) // 2
    win = (img < local)[y0:y0 + PATCH, x0:x0 + PATCH]
    return win.astype(np.uint8)


def extract_template(image: npt.NDArray[np.uint8]) -> tuple[bytes, int]:
    """Image → (512-byte template, quality estimate 0..100)."""
    angle, fg, quality = _block_orientation(image)
    cells = np.where(fg, np.round(np.degrees(angle)).astype(int) % 180, 255).astype(np.uint8)
    patch = np.packbits(_ridge_patch(image)).tobytes()
    head = TEMPLATE_MAGIC + bytes([2, BLOCKS_X, BLOCKS_Y, quality])
    body = head + cells.tobytes() + patch
    return body + bytes(TEMPLATE_BYTES - len(body)), quality


@dataclass(frozen=True)
class _Parsed:
    angles: npt.NDArray[np.float64]  # radians, NaN = background
    patch: npt.NDArray[np.float32]  # 0/1 ridge map, PATCH × PATCH
    quality: int


def parse_template(data: bytes) -> _Parsed | None:
    """A template's parts, or None if the bytes are not a template this simulator made."""
    if (len(data) != TEMPLATE_BYTES or data[:4] != TEMPLATE_MAGIC or data[4] != 2
            or data[5] != BLOCKS_X or data[6] != BLOCKS_Y):
        return None
    n = BLOCKS_X * BLOCKS_Y
    cells = np.frombuffer(data[8:8 + n], dtype=np.uint8).reshape(BLOCKS_Y, BLOCKS_X)
    if np.any((cells >= 180) & (cells != 255)):
        return None
    angles = np.radians(cells.astype(np.float64))
    angles[cells == 255] = np.nan
    bits = np.unpackbits(np.frombuffer(data[8 + n:8 + n + PATCH * PATCH // 8], dtype=np.uint8))
    patch = bits[:PATCH * PATCH].reshape(PATCH, PATCH).astype(np.float32)
    return _Parsed(angles, patch, data[7])


def _orientation_agreement(ga: npt.NDArray[np.float64], gb: npt.NDArray[np.float64]) -> float:
    both = ~np.isnan(ga) & ~np.isnan(gb)
    if int(both.sum()) < 12:
        return 0.0
    return float(np.cos(2 * (ga[both] - gb[both])).mean())


def _patch_correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    """Best normalised correlation of the centre of one ridge map anywhere in the other (both ways)."""
    best = -1.0
    m = (PATCH - PROBE) // 2
    for x, y in ((a, b), (b, a)):
        probe = x[m:m + PROBE, m:m + PROBE]
        if float(probe.std()) < 1e-3 or float(y.std()) < 1e-3:
            continue
        res = cv2.matchTemplate(y, probe, cv2.TM_CCOEFF_NORMED)
        best = max(best, float(res.max()))
    return best


def match_score(a: bytes, b: bytes) -> int:
    """Similarity of two templates, 0..300; ≥ MATCH_THRESHOLD means the same finger.

    score = 300 · clip((c − 0.6) / 0.3) · clip((g − 0.8) / 0.12), where
    g is the mean cos 2Δθ of the two ridge-flow grids (blocks both call
    foreground) and c the best normalised cross-correlation of one central
    ridge map inside the other (shifts up to ±12 px, both ways round).
    Parallel ridges correlate by chance up to about 0.6, hence the offset.
    """
    pa, pb = parse_template(a), parse_template(b)
    if pa is None or pb is None:
        return 0
    flow = min(1.0, max(0.0, (_orientation_agreement(pa.angles, pb.angles) - 0.8) / 0.12))
    if flow == 0.0:
        return 0
    corr = min(1.0, max(0.0, (_patch_correlation(pa.patch, pb.patch) - 0.6) / 0.3))
    return int(round(300 * corr * flow))


def merge_templates(a: bytes, b: bytes) -> bytes:
    """RegModel: average the ridge flow of two char files; keep the better ridge map."""
    pa, pb = parse_template(a), parse_template(b)
    if pa is None or pb is None:
        return a
    va = np.exp(2j * np.nan_to_num(pa.angles)) * ~np.isnan(pa.angles)
    vb = np.exp(2j * np.nan_to_num(pb.angles)) * ~np.isnan(pb.angles)
    s = va + vb
    fg = np.abs(s) > 0.5
    ang = np.mod(np.angle(s) / 2, math.pi)
    cells = np.where(fg, np.round(np.degrees(ang)).astype(int) % 180, 255).astype(np.uint8)
    best = a if pa.quality >= pb.quality else b
    n = BLOCKS_X * BLOCKS_Y
    patch = best[8 + n:8 + n + PATCH * PATCH // 8]
    body = TEMPLATE_MAGIC + bytes([2, BLOCKS_X, BLOCKS_Y, max(pa.quality, pb.quality)]) + cells.tobytes() + patch
    return body + bytes(TEMPLATE_BYTES - len(body))
