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
# A candidate scoring above this (rim depth less flatness and aspect penalties) ends the search early.
GOOD_WINDOW_SCORE = 0.3
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
    scored: list[tuple[float, np.ndarray]] = []
    best: tuple[float, np.ndarray] | None = None
    for view in (dark_view, bright_view):  # the bright view only when the dark one found no clear window
        scored += [(score, quad) for quad in view(gray, profile)
                   if (score := window_score(gray, quad, profile)) is not None]
        kept = innermost(scored)
        best = max(kept, key=lambda sq: sq[0]) if kept else None
        if best is not None and best[0] > GOOD_WINDOW_SCORE:
            break
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


def innermost(scored: list[tuple[float, np.ndarray]]) -> list[tuple[float, np.ndarray]]:
    """Drop candidates that hold a much smaller candidate: a cassette of the window's shape holds its window."""
    areas = [abs(float(cv2.contourArea(q))) for _, q in scored]
    centres = [q.mean(axis=0) for _, q in scored]
    kept = []
    for i, (score, quad) in enumerate(scored):
        holds = any(areas[j] < 0.25 * areas[i] and cv2.pointPolygonTest(quad.reshape(-1, 1, 2), (float(centres[j][0]),
                    float(centres[j][1])), False) > 0 for j in range(len(scored)) if j != i)
        if not holds:
            kept.append((score, quad))
    return kept


def dark_view(gray: np.ndarray, profile: CassetteProfile) -> list[np.ndarray]:
    """Window-shaped outer boundaries of the thin dark structures (rim shadow + lines) a black top-hat isolates."""
    side = min(gray.shape)
    quads: list[np.ndarray] = []
    for frac in (0.03, 0.07):
        closed = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, _disc(frac * side))
        quads += _shapes((closed - gray) / np.maximum(closed, 1.0), (0.04, 0.08, 0.15), profile)
    return quads


def bright_view(gray: np.ndarray, profile: CassetteProfile) -> list[np.ndarray]:
    """Window-shaped regions brighter than their surroundings once the lines and rim are closed over
    (a white membrane on coloured plastic with a faint rim)."""
    side = min(gray.shape)
    no_lines = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, _disc(0.03 * side))
    opened = cv2.morphologyEx(no_lines, cv2.MORPH_OPEN, _disc(0.13 * side, cv2.MORPH_RECT))  # square: separable, fast
    return _shapes((no_lines - opened) / np.maximum(no_lines, 1.0), (0.06, 0.12, 0.2), profile)


def _disc(size: float, shape: int = cv2.MORPH_ELLIPSE) -> np.ndarray:
    k = max(5, int(size) | 1)
    return cv2.getStructuringElement(shape, (k, k))


def _shapes(strength: np.ndarray, levels: tuple[float, ...], profile: CassetteProfile) -> list[np.ndarray]:
    """Outer boundaries of the regions above each level that are shaped like the window."""
    area = float(strength.size)
    quads = []
    for level in levels:
        mask = (strength > level).astype(np.uint8) * 255
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        links = hierarchy[0] if len(contours) else []  # OpenCV returns no hierarchy when nothing is found
        for cnt, link in zip(contours, links, strict=True):
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
    # beyond a window's rim the plastic comes back; beyond a whole cassette, a dark desk does not
    recovered = min(float(across[:3].mean()), float(across[-3:].mean()), float(along[:3].mean()), float(along[-3:].mean()))
    if depth < 0.04 or flat > 0.06 or recovered < 0.45:
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


def window_affine(corners: np.ndarray, profile: CassetteProfile, px_per_length: float,
                  origin: tuple[float, float]) -> np.ndarray:
    """Like ``window_homography`` but affine (least squares over the 4 corners), as a 3 x 3 matrix.

    For points well outside the window: a perspective fitted to a small quad extrapolates its corner
    errors into large ones (1.5 px on the window's short side moved a point one window length away by
    30 px); an affine map grows them only in proportion to the distance."""
    H = window_homography(corners, profile, px_per_length, origin)
    dst = cv2.perspectiveTransform(corners.reshape(1, 4, 2).astype(np.float32), H)[0].astype(np.float64)
    src = np.hstack([corners.astype(np.float64), np.ones((4, 1))])
    A = np.linalg.lstsq(src, dst, rcond=None)[0].T
    return np.vstack([A, [0.0, 0.0, 1.0]])


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


def along_axis(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile, u_to: float) -> np.ndarray | None:
    """Linear luma along the window's axis (band v 0.3..0.7) from its sample end out to ``u_to`` (< 0),
    one sample per 1/100 window length; None if that far point is off the photo."""
    px = 100.0
    n = int(round(-u_to * px))
    band = max(3, round(0.4 * px / profile.window_aspect))
    origin = (float(n), -0.3 * px / profile.window_aspect)  # u = 0 at x = n, u = u_to at x = 0
    H = window_affine(geo.corners, profile, px, origin)
    back = cv2.perspectiveTransform(np.array([[[0.0, band / 2]]], np.float32), np.linalg.inv(H))[0, 0]
    h, w = bgr.shape[:2]
    if not (0 <= back[0] < w and 0 <= back[1] < h):
        return None
    strip = cv2.warpPerspective(bgr, H, (n, band), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    lin = (strip.astype(np.float32) / 255.0) ** profile.gamma
    return np.asarray(np.median(lin @ LUMA_RGB[::-1].astype(np.float32), axis=0)[::-1], dtype=np.float64)


def mark_contrast(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile) -> float | None:
    """How much darker than the plastic the profile's mark is, beyond this window's sample end.

    Read along the window's axis: plastic just outside the window, a dip where the mark is (its
    darkest part within half a radius of where the profile puts it), and plastic again beyond it.
    The last condition tells a mark from the cassette's end and the background behind it. Tolerant
    of ~10 % error in the window's scale, which grows with the distance from the window."""
    o = profile.orientation
    r = o.mark_radius
    prof = along_axis(bgr, geo, profile, o.mark_u - 2.0 * r)
    if prof is None:
        return None
    prof = np.convolve(prof, np.ones(3) / 3, mode="same")

    def at(u0: float, u1: float) -> np.ndarray:
        return prof[int(round(-u1 * 100)): int(round(-u0 * 100)) + 1]

    plastic = float(np.median(at(-0.25, -0.08)))
    dip = float(at(o.mark_u - 0.5 * r, o.mark_u + 0.5 * r).min())
    beyond = at(o.mark_u - 1.9 * r, o.mark_u - 1.05 * r)
    restored = bool(np.any((beyond > 0.75 * plastic) & (beyond < 1.3 * plastic)))
    if plastic <= 0 or not restored:
        return 0.0
    return max(0.0, 1.0 - dip / plastic)


def orient_by_mark(bgr: np.ndarray, geo: Geometry, profile: CassetteProfile) -> Geometry:
    """Turn the window so the profile's mark (e.g. the sample well) is beyond its sample end."""
    seen = mark_contrast(bgr, geo, profile), mark_contrast(bgr, geo.turned(), profile)
    if seen[0] is None and seen[1] is None:
        raise StripNotFoundError(
            "both ends of the cassette are outside the photo, so its sample end cannot be told; re-take the photo "
            "with the whole cassette in the frame", reason="no_orientation")
    here, there = (level or 0.0 for level in seen)  # a spot off the photo shows no mark
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
