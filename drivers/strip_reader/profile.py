"""Cassette profiles: what the reader needs to know about one product, as a TOML data file.

Why data and not code: cassettes differ per manufacturer and per analyte (where the window sits,
where C and T run, the line colour, the cut-offs), and a station must take a new product without
a software release. Everything the reader looks at is given relative to the *result window*, never
to the cassette's outline, so the window can sit anywhere on the cassette and the cassette can be
any shape (docs/protocols/rapidtest-astm.md, "Cassette profiles", documents every key).

Built-in profiles live in ``profiles/`` beside this module; ``load_profile`` takes a built-in name
or a path. ``profile_to_toml`` writes one back (``egw strip calibrate``).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StripProfileError
from .judgement import StripThresholds

PROFILE_DIR = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = "egw-sim"
FORMAT = 1
CUES = ("mark", "lines")

# BT.601 luma weights, the ones JPEG uses for its full-resolution Y plane. A profile of linear R, G, B
# mixed with these weights cancels (to first order, on a near-neutral membrane) the coarse chroma errors
# that JPEG's 4:2:0 subsampling and chroma quantisation put into each channel separately.
LUMA_RGB = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class Orientation:
    """How the reader tells the sample end of the window from the far end (a photo may be at any angle).

    ``cue = "lines"``: C and T sit asymmetrically in the window, so their pattern says which end is which.
    ``cue = "mark"``: something darker than the plastic (the sample well, a printed arrow) lies at
    ``mark_u`` window lengths from the window's sample-end edge (negative: beyond it), ``mark_v``
    window widths across, within ``mark_radius`` window lengths."""

    cue: str = "lines"
    mark_u: float = 0.0
    mark_v: float = 0.5
    mark_radius: float = 0.1


@dataclass(frozen=True)
class CassetteProfile:
    """One product's cassette: the result window's shape, its lines, the orientation cue and the cut-offs.

    Positions along the window run from its sample end (0) to its far end (1); ``line_width`` is in
    window lengths. ``line_absorption`` is the fraction of linear R, G, B light a line of intensity 1.0
    absorbs: it sets the intensity scale (a line's integrated absorbance / (luma absorption x width))."""

    name: str
    window_aspect: float
    line_t: float
    line_c: float
    line_width: float
    line_absorption: tuple[float, float, float] = (0.30, 0.80, 0.55)
    thresholds: StripThresholds = field(default_factory=StripThresholds)
    orientation: Orientation = field(default_factory=Orientation)
    product: str = ""
    analyte: str = ""
    gamma: float = 2.2
    source: str = ""

    @property
    def luma_absorption(self) -> float:
        """What a full line absorbs of the luma-weighted light the reader profiles."""
        return float(np.dot(LUMA_RGB, self.line_absorption))

    def with_thresholds(self, thresholds: StripThresholds) -> CassetteProfile:
        return replace(self, thresholds=thresholds)


def builtin_profiles() -> list[str]:
    """The names of the profiles shipped with the reader."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> CassetteProfile:
    """A built-in profile by name, or a profile file by path; a ``StripProfileError`` says what is wrong."""
    text_name = str(name_or_path)
    path = Path(name_or_path)
    if not path.suffix and "/" not in text_name:
        path = PROFILE_DIR / f"{text_name}.toml"
        if not path.is_file():
            raise StripProfileError(
                f"no built-in cassette profile named {text_name!r}; choose one of {', '.join(builtin_profiles())} "
                "or give the path of a .toml profile file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StripProfileError(f"cannot read cassette profile {path}: {exc.strerror or exc}; check the path") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise StripProfileError(f"cassette profile {path} is not valid TOML ({exc}); fix the file") from exc
    return profile_from_dict(data, source=str(path))


def profile_from_dict(data: dict[str, Any], source: str = "") -> CassetteProfile:
    """Validate a parsed profile: unknown keys, missing keys, wrong types and impossible geometry are refused."""
    where = source or "cassette profile"
    _keys(data, {"format", "name", "product", "analyte", "window", "orientation", "thresholds"}, where)
    if data.get("format") != FORMAT:
        raise StripProfileError(f"{where}: format = {data.get('format')!r} is not supported; write format = {FORMAT}")
    window = _table(data, "window", where)
    _keys(window, {"aspect", "line_t", "line_c", "line_width", "line_absorption", "gamma"}, f"{where} [window]")
    orient = _table(data, "orientation", where)
    _keys(orient, {"cue", "mark_u", "mark_v", "mark_radius"}, f"{where} [orientation]")
    limits = _table(data, "thresholds", where)
    _keys(limits, {"c_min", "positive_max", "negative_min"}, f"{where} [thresholds]")
    absorption = window.get("line_absorption", [0.30, 0.80, 0.55])
    if (not isinstance(absorption, list) or len(absorption) != 3
            or not all(isinstance(v, int | float) and 0 <= v <= 1 for v in absorption)):
        raise StripProfileError(f"{where} [window]: line_absorption must be three numbers 0..1 (R, G, B)")
    try:
        thresholds = StripThresholds(c_min=_num(limits, "c_min", where), positive_max=_num(limits, "positive_max", where),
                                     negative_min=_num(limits, "negative_min", where))
    except ValueError as exc:
        raise StripProfileError(f"{where} [thresholds]: {exc}") from exc
    cue = orient.get("cue")
    if cue not in CUES:
        raise StripProfileError(f"{where} [orientation]: cue = {cue!r}; write one of {', '.join(map(repr, CUES))}")
    orientation = Orientation(cue=str(cue), mark_u=float(orient.get("mark_u", 0.0)), mark_v=float(orient.get("mark_v", 0.5)),
                              mark_radius=float(orient.get("mark_radius", 0.1)))
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise StripProfileError(f"{where}: name must be a non-empty string")
    profile = CassetteProfile(
        name=name, product=str(data.get("product", "")), analyte=str(data.get("analyte", "")),
        window_aspect=_num(window, "aspect", where), line_t=_num(window, "line_t", where),
        line_c=_num(window, "line_c", where), line_width=_num(window, "line_width", where),
        line_absorption=(float(absorption[0]), float(absorption[1]), float(absorption[2])),
        gamma=float(window.get("gamma", 2.2)), thresholds=thresholds, orientation=orientation, source=source)
    check_geometry(profile, where)
    return profile


def check_geometry(p: CassetteProfile, where: str) -> None:
    """Refuse a profile the reader could not use: lines off the window, touching, or no way to orient."""
    problems = []
    if not 1.2 <= p.window_aspect <= 12:
        problems.append(f"window aspect {p.window_aspect} (length / width) must be 1.2..12")
    if not 0.01 <= p.line_width <= 0.2:
        problems.append(f"line_width {p.line_width} must be 0.01..0.2 window lengths")
    for key, pos in (("line_t", p.line_t), ("line_c", p.line_c)):
        if not 0.15 <= pos <= 0.85:
            problems.append(f"{key} {pos} must be 0.15..0.85 (lines closer to the rim cannot be measured)")
    if p.line_c - p.line_t < 3 * p.line_width:
        problems.append(f"C ({p.line_c}) must lie beyond T ({p.line_t}) by at least 3 line widths")
    if not 1.5 <= p.gamma <= 3.0 or not math.isfinite(p.luma_absorption) or p.luma_absorption < 0.05:
        problems.append("gamma must be 1.5..3.0 and the line must absorb some light (line_absorption)")
    o = p.orientation
    if o.cue == "lines" and abs(p.line_t - (1 - p.line_c)) < 0.06:
        problems.append("T and C sit symmetrically in the window, so cue = 'lines' cannot tell its ends apart; "
                        "use cue = 'mark' with the sample well's position")
    if o.cue == "mark" and (not -3 <= o.mark_u <= 4 or 0 <= o.mark_u <= 1 or not 0.02 <= o.mark_radius <= 1):
        problems.append("mark_u must be outside the window (below 0 or above 1, within -3..4) and mark_radius 0.02..1")
    if problems:
        raise StripProfileError(f"{where}: " + "; ".join(problems))


def profile_to_toml(p: CassetteProfile, comment: str = "") -> str:
    """The profile as a TOML file ``load_profile`` reads back to an equal profile."""
    lines = [f"# {row}" for row in comment.splitlines()] if comment else []
    o, th = p.orientation, p.thresholds
    lines += [
        f"format = {FORMAT}", f"name = {_q(p.name)}", f"product = {_q(p.product)}", f"analyte = {_q(p.analyte)}", "",
        "[window]", f"aspect = {p.window_aspect:.4f}", f"line_t = {p.line_t:.4f}", f"line_c = {p.line_c:.4f}",
        f"line_width = {p.line_width:.4f}",
        "line_absorption = [" + ", ".join(f"{v:.4f}" for v in p.line_absorption) + "]", f"gamma = {p.gamma}", "",
        "[orientation]", f"cue = {_q(o.cue)}",
    ]
    if o.cue == "mark":
        lines += [f"mark_u = {o.mark_u:.4f}", f"mark_v = {o.mark_v:.4f}", f"mark_radius = {o.mark_radius:.4f}"]
    lines += ["", "[thresholds]", f"c_min = {th.c_min:.4f}", f"positive_max = {th.positive_max:.4f}",
              f"negative_min = {th.negative_min:.4f}", ""]
    return "\n".join(lines)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise StripProfileError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise StripProfileError(f"{where}: the [{key}] table is missing; see the profile format in the docs")
    return value


def _num(table: dict[str, Any], key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StripProfileError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)
