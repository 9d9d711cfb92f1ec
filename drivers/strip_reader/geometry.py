"""Steps 1 and 2: find the cassette in the photo, make it upright, and turn its sample end to the left.

The cassette design (body units, the drawing in the package docstring) lives here because
every position the reader looks at is a fraction of the cassette's length."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import StripImageError, StripLinesError, StripNotFoundError


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
        return float(np.dot(LUMA_RGB, self.gold_absorption))


# BT.601 luma weights, the ones JPEG uses for its full-resolution Y plane. A
# profile of linear R, G, B mixed with these weights cancels (to first order,
# on a near-neutral membrane) the coarse chroma errors that JPEG's 4:2:0
# subsampling and chroma quantisation put into each channel separately.
LUMA_RGB = np.array([0.299, 0.587, 0.114])

# Length of the upright cassette the warp produces (pixels); every later step works on it.
CANON_LEN = 800
# Below this length (photo pixels) a line is under 4.5 px wide and the reading
# drifts; refuse and ask for a closer photo.
MIN_LENGTH_PX = 200


@dataclass
class Geometry:
    """What finding and orienting the cassette learnt: notes for the reading, and its orientation."""

    notes: list[str] = field(default_factory=list)
    upside_down: bool = False


def as_bgr(image: np.ndarray) -> np.ndarray:
    """The photo as contiguous 8-bit BGR, or a ``StripImageError`` saying what kind of photo is needed."""
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


def find_cassette(bgr: np.ndarray, design: CassetteDesign) -> tuple[np.ndarray, Geometry]:
    """The cassette's four corners in the photo (clockwise from the sample end's long side), or a ``StripReadError``."""
    geo = Geometry()
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
        best = _best_candidate(mask, kernel, design, rejected if level == levels[0] else [])
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
    corners = quad_corners(cnt)
    if corners is None:
        raise StripNotFoundError(
            "the cassette's outline is not a clean rectangle (occluded or strongly tilted?); re-take the photo "
            "from straight above with nothing covering the cassette"
        )
    corners = (corners / scale).astype(np.float32)
    length = 0.5 * (float(np.linalg.norm(corners[1] - corners[0])) + float(np.linalg.norm(corners[2] - corners[3])))
    if length < MIN_LENGTH_PX:
        raise StripLinesError(
            f"the cassette is only {length:.0f} px long in the photo (at least {MIN_LENGTH_PX} needed to "
            "measure its lines); move the camera closer so the cassette fills a third or more of the frame"
        )
    return corners, geo

def _best_candidate(mask: np.ndarray, kernel: np.ndarray, design: CassetteDesign, rejected: list[str]) -> np.ndarray | None:
    """The largest blob shaped like the cassette (aspect, fill), or None."""
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    image_area = float(mask.shape[0] * mask.shape[1])
    best: tuple[float, np.ndarray] | None = None
    want = 1.0 / design.aspect
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

def warp(bgr: np.ndarray, corners: np.ndarray, design: CassetteDesign) -> np.ndarray:
    """The cassette cut out and made upright: ``CANON_LEN`` px long, the design's aspect high."""
    L = CANON_LEN
    H = int(round(L * design.aspect))
    dst = np.array([[0, 0], [L, 0], [L, H], [0, H]], np.float32)
    M = cv2.getPerspectiveTransform(corners, dst)
    return cv2.warpPerspective(bgr, M, (L, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def orient(lin: np.ndarray, geo: Geometry, design: CassetteDesign) -> None:
    """Which end holds the sample well? Sets ``geo.upside_down`` when it is on the right."""
    d = design
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


def quad_corners(cnt: np.ndarray) -> np.ndarray | None:
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
