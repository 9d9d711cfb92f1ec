"""Fit a cassette profile from a handful of photos with known results (``egw strip calibrate``).

Why: a new product arrives with a package insert, not with a profile. An inspector photographs a few
cassettes whose results are known (the manufacturer's controls: a clear negative, cut-off controls on
either side of each threshold, an invalid card), each with the sample end to the LEFT and roughly level,
and this module measures from them what the reader needs:

1. the window's aspect (the window is searched for at a few aspects; the median of what is found);
2. the T and C positions and the line width, from the mean absorbance profile along the window (C is the
   line further along the flow, i.e. the right-hand peak);
3. the orientation cue: ``lines`` when T and C sit asymmetrically, else a ``mark`` (the sample well)
   found as the darkest dip on the cassette beyond the window's sample end;
4. the thresholds: each one half-way between the nearest T/C values judged on either side of it;
   C_min 0.08 above the invalid cards' C (at most half-way to the valid ones'; 0.10 with no invalid card).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from .errors import StripProfileError, StripReadError
from .geometry import MARGIN, WIN_LEN, Geometry, along_axis, as_bgr, find_window, refine, warp_window
from .judgement import StripThresholds
from .measure import window_light
from .profile import CassetteProfile, Orientation, check_geometry
from .reader import StripReader

RESULTS = ("positive", "suspicious", "negative", "invalid")
_TRIAL_ASPECTS = (2.2, 3.0, 4.2)


@dataclass(frozen=True)
class CalibrationPhoto:
    """One photo (BGR) and its known result (positive / suspicious / negative / invalid)."""

    name: str
    image: np.ndarray
    result: str


def calibrate(photos: list[CalibrationPhoto], name: str,
              line_absorption: tuple[float, float, float] = (0.30, 0.80, 0.55)) -> CassetteProfile:
    """A validated profile fitted to ``photos``; a ``StripProfileError`` says what is missing."""
    if len(photos) < 4:
        raise StripProfileError(f"calibration needs at least 4 photos with known results, got {len(photos)}")
    bad = sorted({p.result for p in photos} - set(RESULTS))
    if bad:
        raise StripProfileError(f"unknown result(s) {bad} in the truth file; use {', '.join(RESULTS)}")
    found = [(p, *_find_level_window(p)) for p in photos]
    aspect = float(np.median([a for _, _, a in found]))
    draft = CassetteProfile(name=name, window_aspect=aspect, line_t=0.3, line_c=0.7, line_width=0.05,
                            line_absorption=line_absorption)
    windows = [(p, window_light(warp_window(as_bgr(p.image), geo, draft), draft)) for p, geo, _ in found]
    line_t, line_c, width = _line_positions([light for p, light in windows if p.result != "invalid"], draft)
    profile = replace(draft, line_t=line_t, line_c=line_c, line_width=width)
    profile = replace(profile, orientation=_orientation(profile, [(p, geo) for p, geo, _ in found]))
    check_geometry(profile, f"calibrated profile {name}")
    return replace(profile, thresholds=_thresholds(profile, photos))


def _find_level_window(photo: CalibrationPhoto) -> tuple[Geometry, float]:
    """The window in a calibration photo, sample end left, and its measured aspect."""
    bgr = as_bgr(photo.image)
    best: tuple[float, Geometry] | None = None
    for trial in _TRIAL_ASPECTS:
        probe = CassetteProfile(name="calibration", window_aspect=trial, line_t=0.3, line_c=0.7, line_width=0.05)
        try:
            geo = refine(bgr, find_window(bgr, probe), probe)
        except StripReadError:
            continue
        c = geo.corners
        aspect = float(np.linalg.norm(c[1] - c[0]) + np.linalg.norm(c[2] - c[3])) / float(
            np.linalg.norm(c[3] - c[0]) + np.linalg.norm(c[2] - c[1]))
        if best is None or abs(np.log(aspect / trial)) < abs(np.log(best[0] / trial)):
            best = (aspect, geo)
    if best is None:
        raise StripProfileError(f"{photo.name}: no result window found; re-take it with the whole cassette in the "
                                "frame, sample end left, in even light")
    aspect, geo = best
    if geo.corners[1][0] < geo.corners[0][0]:  # the first long side runs right to left: turn
        geo = geo.turned()
    if abs(float(geo.corners[1][1] - geo.corners[0][1])) > 0.6 * abs(float(geo.corners[1][0] - geo.corners[0][0])):
        raise StripProfileError(f"{photo.name}: the cassette is not roughly level; photograph calibration cassettes "
                                "lying left to right, sample end left")
    return geo, aspect


def _line_positions(lights: list[np.ndarray], draft: CassetteProfile) -> tuple[float, float, float]:
    """T, C (window fractions) and the line width, from the mean absorbance along the window."""
    if not lights:
        raise StripProfileError("calibration needs photos of valid cards (with a C line), not only invalid ones")
    width_px = round(WIN_LEN / draft.window_aspect)
    absorb = []
    for light in lights:
        band = light[MARGIN + width_px // 5: MARGIN + width_px - width_px // 5, MARGIN: MARGIN + WIN_LEN].mean(axis=0)
        envelope = np.percentile(np.lib.stride_tricks.sliding_window_view(np.pad(band, 40, mode="edge"), 81), 90, axis=1)
        absorb.append(1.0 - band / np.maximum(envelope, 1e-9))
    mean = np.convolve(np.mean(absorb, axis=0), np.ones(5) / 5, mode="same")
    u = (np.arange(WIN_LEN) + 0.5) / WIN_LEN
    inner = (u > 0.12) & (u < 0.88)
    peaks = []
    work = np.where(inner, mean, 0.0)
    for _ in range(2):
        i = int(np.argmax(work))
        if work[i] <= 0.01:
            raise StripProfileError("no two lines found in the calibration photos; include cards with clear C and T lines")
        peaks.append(i)
        work[max(0, i - WIN_LEN // 12): i + WIN_LEN // 12] = 0.0
    t_i, c_i = sorted(peaks)
    near = slice(max(0, c_i - WIN_LEN // 15), c_i + WIN_LEN // 15)
    width = float(mean[near].sum() / max(float(mean[c_i]), 1e-9)) / WIN_LEN
    return float(u[t_i]), float(u[c_i]), float(np.clip(width, 0.02, 0.15))


def _orientation(profile: CassetteProfile, found: list[tuple[CalibrationPhoto, Geometry]]) -> Orientation:
    """``lines`` when T and C are asymmetric enough, else the darkest dip beyond the window's sample end."""
    if abs(profile.line_t - (1 - profile.line_c)) >= 0.08:
        return Orientation(cue="lines")
    dips = []
    for photo, geo in found:
        along = along_axis(as_bgr(photo.image), geo, profile, -2.0)
        if along is None:
            continue
        smooth = np.convolve(along, np.ones(5) / 5, mode="same")
        dip = _widest_dip(smooth, float(np.median(smooth[5:20])))
        if dip is not None:
            dips.append(dip)
    if len(dips) < max(2, len(found) // 2):
        raise StripProfileError("T and C sit symmetrically in the window and no sample well was found beyond its "
                                "left end; photograph the cassettes sample end left with the whole cassette visible")
    u = float(np.median([d[0] for d in dips]))
    radius = float(np.clip(np.median([d[1] for d in dips]), 0.04, 0.6))
    return Orientation(cue="mark", mark_u=u, mark_v=0.5, mark_radius=radius)


def _widest_dip(smooth: np.ndarray, plastic: float) -> tuple[float, float] | None:
    """The widest dark run beyond the window (samples 1/100 window length apart) that plastic follows
    again: (centre u, radius). A run that never recovers is the cassette's end, not a mark; the widest
    is the sample well rather than a printed letter."""
    runs: list[tuple[int, int]] = []
    i = 20
    while i < len(smooth):
        if smooth[i] >= 0.8 * plastic:
            i += 1
            continue
        lo = i
        while lo > 0 and smooth[lo - 1] < 0.9 * plastic:
            lo -= 1
        j = i
        while j < len(smooth) and smooth[j] < 0.9 * plastic:
            j += 1
        if j >= len(smooth) - 3:
            break
        runs.append((lo, j))
        i = j + 1
    if not runs:
        return None
    lo, hi = max(runs, key=lambda run: run[1] - run[0])
    return -(lo + hi) / 200.0, (hi - lo) / 200.0


def _thresholds(profile: CassetteProfile, photos: list[CalibrationPhoto]) -> StripThresholds:
    """Each cut-off half-way between the nearest readings judged on either side of it."""
    loose = StripThresholds(c_min=0.0, positive_max=0.0, negative_min=0.0)
    reader = StripReader(thresholds=loose, profile=profile)
    readings: dict[str, list[tuple[float, float]]] = {r: [] for r in RESULTS}
    for photo in photos:
        try:
            reading = reader.read(photo.image)
        except StripReadError as exc:
            raise StripProfileError(f"{photo.name}: the calibrated geometry cannot read it ({exc})") from exc
        readings[photo.result].append((reading.c, reading.t_over_c))
    valid_c = [c for r in ("positive", "suspicious", "negative") for c, _ in readings[r]]
    c_min = 0.10
    if readings["invalid"]:  # just above the invalid cards' C: a faint but real C line still counts
        worst = max(c for c, _ in readings["invalid"])
        c_min = min(0.5 * (worst + min(valid_c)), worst + 0.08)
    pos = [tc for _, tc in readings["positive"]]
    sus = [tc for _, tc in readings["suspicious"]]
    neg = [tc for _, tc in readings["negative"]]
    if not pos or not neg:
        raise StripProfileError("calibration needs at least one positive and one negative card")
    a = 0.5 * (max(pos) + min(sus or neg))
    b = 0.5 * (max(sus or pos) + min(neg))
    if not max(pos) < a <= b < min(neg):
        raise StripProfileError(f"the known results overlap in T/C (positive up to {max(pos):.3f}, negative from "
                                f"{min(neg):.3f}); check the truth file and the photos")
    return StripThresholds(c_min=round(c_min, 4), positive_max=round(a, 4), negative_min=round(b, 4))


def load_photo(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise StripProfileError(f"cannot read calibration photo {path}; give JPEG or PNG files")
    return np.asarray(image)
