"""Steps 1 and 2: find the result window in the photo, straighten it, and turn its sample end to the left.

Why the window and not the cassette: cassettes differ in outline, colour and where the window sits,
and on a light table or a white desk the outline vanishes; the window is what every design has,
a recess of bright membrane bounded by a darker rim, crossed by the lines. It is found as the outer
boundary of the thin dark structures (rim + lines) that a morphological black-top-hat isolates, then
checked: the profile's aspect, a dark rim on all four sides, a flat membrane across.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import StripImageError, StripLinesError, StripNotFoundError
from .profile import LUMA_RGB, CassetteProfile

# Canonical window: WIN_LEN px along the flow, WIN_LEN / aspect across, MARGIN px of context around it.
WIN_LEN = 480
MARGIN = 60
# Below this window length (photo pixels) a line is only a few pixels wide and the reading drifts.
MIN_WINDOW_PX = 90
# Work size for the search (longest side, px): enough for a window of MIN_WINDOW_PX, fast.
SEARCH_SIDE = 900
# The mark (sample well) must be this much darker than the plastic around it (the simulated well: 0.4-0.5).
MIN_MARK_CONTRAST = 0.12


@dataclass
class Geometry:
    """What finding and orienting the window learnt: notes for the reading, the photo-to-window map."""

    corners: np.ndarray  # window corners in the photo: sample-end top, far top, far bottom, sample-end bottom
    window_px: float     # window length in the photo
    notes: list[str] = field(default_factory=list)

    def turned(self) -> Geometry:
        """The same window seen from its other end (a 180-degree turn)."""
        return Geometry(np.roll(self.corners, 2, axis=0), self.window_px, list(self.notes))


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


def find_window(bgr: np.ndarray, profile: CassetteProfile) -> Geometry:
    """The result window's corners in the photo (either end first), or a refusal naming what was not found."""
    h, w = bgr.shape[:2]
    scale = min(1.0, SEARCH_SIDE / max(h, w))
    small = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else bgr
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
    if float(np.percentile(gray, 99)) < 25:
        raise StripNotFoundError("the photo is almost black; add light and re-take it", reason="dark")
    best: tuple[float, np.ndarray] | None = None
    for quad in _candidates(gray, profile):
        score = window_score(gray, quad, profile)
        if score is not None and (best is None or score > best[0]):
            best = (score, quad)
    if best is None:
        raise StripNotFoundError(
            f"no result window of the {profile.name} cassette (a bright membrane {profile.window_aspect:.1f} times "
            "as long as wide, inside a darker rim) was found; re-take the photo with the whole cassette in the "
            "frame, in focus, from straight above", reason="no_window")
    corners = (best[1] / scale).astype(np.float32)
    length = 0.5 * (float(np.linalg.norm(corners[1] - corners[0])) + float(np.linalg.norm(corners[2] - corners[3])))
    if length < MIN_WINDOW_PX:
        raise StripLinesError(
            f"the result window is only {length:.0f} px long in the photo (at least {MIN_WINDOW_PX} needed to "
            "measure its lines); move the camera closer so the cassette fills a third or more of the frame",
            reason="too_small")
    return Geometry(corners=corners, window_px=length)


def _candidates(gray: np.ndarray, profile: CassetteProfile) -> list[np.ndarray]:
    """Quadrilaterals of the window's aspect bounded by thin dark structures, at a few scales and levels."""
    side = min(gray.shape)
    area = float(gray.size)
    quads: list[np.ndarray] = []
    for frac in (0.03, 0.07):
        k = max(5, int(frac * side) | 1)
        closed = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        dark = (closed - gray) / np.maximum(closed, 1.0)
        for level in (0.04, 0.08, 0.15):
            mask = (dark > level).astype(np.uint8) * 255
            contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
            if hierarchy is None:
                continue
            for cnt, link in zip(contours, hierarchy[0], strict=True):
                if link[3] != -1 or cv2.contourArea(cnt) < 0.0015 * area:
                    continue
                quad = _quad_if_window_shaped(cnt, profile)
                if quad is not None:
                    quads.append(quad)
    return quads


def _quad_if_window_shaped(cnt: np.ndarray, profile: CassetteProfile) -> np.ndarray | None:
    (_, _), (rw, rh), _ = cv2.minAreaRect(cnt)
    long_side, short_side = max(rw, rh), min(rw, rh)
    if short_side < 4:
        return None
    aspect = long_side / short_side
    if not 0.7 * profile.window_aspect <= aspect <= 1.4 * profile.window_aspect:
        return None
    if cv2.contourArea(cnt) / (rw * rh) < 0.8:
        return None
    return quad_corners(cnt)


def window_score(gray: np.ndarray, quad: np.ndarray, profile: CassetteProfile) -> float | None:
    """How window-like the quad is: a dark rim on all four sides and a flat membrane across; None if not."""
    length, width = 120, max(12, round(120 / profile.window_aspect))
    m = 12
    dst = np.array([[m, m], [m + length, m], [m + length, m + width], [m, m + width]], np.float32)
    patch = cv2.warpPerspective(gray, cv2.getPerspectiveTransform(quad.astype(np.float32), dst),
                                (length + 2 * m, width + 2 * m), flags=cv2.INTER_LINEAR, borderValue=0)
    inner = patch[m + width // 4: m + width - width // 4, m + length // 10: m + length - length // 10]
    level = float(np.median(inner))
    if level < 20:
        return None
    across = patch[:, m + length // 10: m + length - length // 10].mean(axis=1) / level
    along = patch[m + width // 4: m + width - width // 4].mean(axis=0) / level
    rims = [float(across[: m + width // 5].min()), float(across[m + width - width // 5:].min()),
            float(along[: m + length // 12].min()), float(along[m + length - length // 12:].min())]
    flat = float(np.std(across[m + width // 5: m + width - width // 5]))
    depth = 1.0 - max(rims)
    if depth < 0.04 or flat > 0.06:
        return None
    fit = abs(math.log(_aspect(quad) / profile.window_aspect))
    return depth - 2.0 * flat - 0.5 * fit


def _aspect(quad: np.ndarray) -> float:
    a = 0.5 * float(np.linalg.norm(quad[1] - quad[0]) + np.linalg.norm(quad[2] - quad[3]))
    b = 0.5 * float(np.linalg.norm(quad[3] - quad[0]) + np.linalg.norm(quad[2] - quad[1]))
    return a / max(b, 1e-6)


def window_homography(corners: np.ndarray, profile: CassetteProfile, px_per_length: float = WIN_LEN,
                      origin: tuple[float, float] = (MARGIN, MARGIN)) -> np.ndarray:
    """Photo -> canonical window pixels: (u, v) in window lengths/widths map to origin + (u, v) * size."""
    length = px_per_length
    width = px_per_length / profile.window_aspect
    ox, oy = origin
    dst = np.array([[ox, oy], [ox + length, oy], [ox + length, oy + width], [ox, oy + width]], np.float32)
    return cv2.getPerspectiveTransform(corners.astype(np.float32), dst)


def warp_window(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile) -> np.ndarray:
    """The window and MARGIN px around it, upright, sample end left: ``WIN_LEN`` px along the flow."""
    size = (WIN_LEN + 2 * MARGIN, round(WIN_LEN / profile.window_aspect) + 2 * MARGIN)
    return cv2.warpPerspective(bgr, window_homography(geo.corners, profile), size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)


def refine(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile) -> Geometry:
    """The window's corners moved onto its rim shadow (darkest row/column near each side).

    The search outline is only good to a few pixels; the mark is looked for a window length away,
    where a small error in the corners grows, and the lines are placed from the ends."""
    light = cv2.cvtColor(warp_window(bgr, geo, profile), cv2.COLOR_BGR2GRAY).astype(np.float32)
    width = round(WIN_LEN / profile.window_aspect)
    along = light[MARGIN + width // 5: MARGIN + width - width // 5].mean(axis=0)
    across = light[:, MARGIN + WIN_LEN // 10: MARGIN + WIN_LEN - WIN_LEN // 10].mean(axis=1)
    x0, x1 = (_darkest(along, MARGIN + k * WIN_LEN, 0.06 * WIN_LEN) for k in (0, 1))
    y0, y1 = (_darkest(across, MARGIN + k * width, 0.2 * width) for k in (0, 1))
    if x0 is None or x1 is None or y0 is None or y1 is None:
        return geo
    pts = np.array([[[x0, y0], [x1, y0], [x1, y1], [x0, y1]]], np.float32)
    H = window_homography(geo.corners, profile)
    corners = cv2.perspectiveTransform(pts, np.linalg.inv(H))[0]
    length = 0.5 * (float(np.linalg.norm(corners[1] - corners[0])) + float(np.linalg.norm(corners[2] - corners[3])))
    return Geometry(corners=corners.astype(np.float32), window_px=length, notes=list(geo.notes))


def _darkest(values: np.ndarray, nominal: float, reach: float) -> float | None:
    """Sub-pixel position of the darkest sample within ``reach`` of ``nominal``; None at the search's edge."""
    lo, hi = int(nominal - reach), int(nominal + reach) + 1
    seg = np.convolve(values[lo:hi], np.ones(3) / 3, mode="same")[1:-1]
    i = int(np.argmin(seg))
    if i in (0, len(seg) - 1):
        return None
    a, b, c = seg[i - 1], seg[i], seg[i + 1]
    denom = a - 2 * b + c
    return lo + 1 + i + (0.5 * (a - c) / denom if denom > 1e-9 else 0.0)


def _probe(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile, u: float, v: float,
           radius: float) -> np.ndarray | None:
    """Linear luma of a square patch (2 x ``radius`` window lengths wide) centred at window coordinates (u, v)."""
    px = 48.0 / radius  # the patch is 96 px across whatever its size on the cassette
    size = 97
    origin = (size / 2 - u * px, size / 2 - v * px / profile.window_aspect)
    H = window_homography(geo.corners, profile, px, origin)
    back = cv2.perspectiveTransform(np.array([[[size / 2, size / 2]]], np.float32), np.linalg.inv(H))[0, 0]
    h, w = bgr.shape[:2]
    if not (0 <= back[0] < w and 0 <= back[1] < h):
        return None
    patch = cv2.warpPerspective(bgr, H, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT)
    lin = (patch.astype(np.float32) / 255.0) ** profile.gamma
    return np.asarray(lin @ LUMA_RGB[::-1].astype(np.float32), dtype=np.float32)


def mark_contrast(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile) -> float | None:
    """How much darker the profile's mark is than the plastic around it, beyond this window's start.

    0 when the ring around the mark is not plastic (its level differs from the plastic just outside the
    window's end): a cassette end or the background there is not a mark. None if the spot is off the photo."""
    o = profile.orientation
    outward = -1.0 if o.mark_u < 0 else 1.0
    spot = _probe(bgr, geo, profile, o.mark_u, o.mark_v, 1.6 * o.mark_radius)
    plastic = _probe(bgr, geo, profile, 0.5 + outward * 0.65, 0.5, 0.05)
    beyond = [_probe(bgr, geo, profile, o.mark_u + outward * k * o.mark_radius, o.mark_v, 0.12 * o.mark_radius)
              for k in (1.35, 1.6)]
    if spot is None or plastic is None or beyond[0] is None or beyond[1] is None:
        return None
    yy, xx = np.mgrid[0:spot.shape[0], 0:spot.shape[1]]
    r = np.hypot(xx - spot.shape[1] / 2, yy - spot.shape[0] / 2) / (spot.shape[0] / 2) * 1.6  # in mark radii
    disc, ring = float(spot[r < 0.75].mean()), float(np.median(spot[(r > 1.25) & (r < 1.6)]))
    reference = float(np.median(plastic))
    outer = min((float(np.median(b)) for b in beyond if b is not None), key=lambda v: abs(v - reference))
    if not all(0.6 * reference <= level <= 1.4 * reference for level in (ring, outer)):
        return 0.0  # not plastic around and beyond it: the cassette's end or the background, not a mark
    return max(0.0, 1.0 - disc / ring)


def orient_by_mark(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile) -> Geometry:
    """Turn the window so the profile's mark (e.g. the sample well) is beyond its sample end."""
    here, there = mark_contrast(bgr, geo, profile), mark_contrast(bgr, geo.turned(), profile)
    if here is None or there is None:
        raise StripNotFoundError(
            "an end of the cassette is outside the photo, so its sample end cannot be told; re-take the photo "
            "with the whole cassette in the frame", reason="no_orientation")
    if max(here, there) < MIN_MARK_CONTRAST or min(here, there) > 0.5 * max(here, there):
        raise StripNotFoundError(
            f"the {profile.name} cassette's sample-end mark (the sample well) is not seen at one end of the "
            "window, so C cannot be told from T; this may be another kind of cassette (choose its profile) or the "
            "mark is covered: re-take the photo with the whole cassette visible", reason="no_orientation")
    if there > here:
        geo = geo.turned()
        geo.notes.append("cassette was upside down in the photo")
    return geo


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
    """Four corners of a roughly rectangular contour (perspective kept), clockwise from a long side."""
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
    picked = [hp[int(np.argmax(hp @ (corner - centre)))] for corner in box]
    quad = np.array(picked, np.float32)
    if cv2.contourArea(quad) < 0.5 * cv2.contourArea(cnt):
        return None
    return _order_quad(quad)
