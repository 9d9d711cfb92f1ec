r"""Read a colloidal-gold test cassette from a photo: C and T line intensities, T/C, judgement.

Why a camera reader: food-safety rapid tests (docs/protocols/rapidtest-astm.md §6) are
judged from the C (control) and T (test) line intensities. A phone or desk
camera photo is kept as evidence by the caller; this module only reads it
and never writes to it.

Pipeline (``StripReader.read``), for the cassette described by a *profile* (``profile.py``, TOML
files in ``profiles/``; docs/protocols/rapidtest-astm.md §7)::

    BGR photo ──► grey, at most 900 px ──► window candidates: outer boundaries of the thin dark
                  structures (black top-hat: rim shadow + lines), else of regions brighter than
                  their surroundings (white membrane on coloured plastic), of the profile's aspect
              ──► each checked (dark rim on four sides, flat membrane across, plastic again
                  beyond the rim; a candidate holding a much smaller one is the cassette, dropped)
              ──► 4 corners, moved onto the rim shadow ──► which end is the sample end?
                  cue "mark": the profile's dark mark (sample well) beyond one end, read along
                  the axis with an affine map; cue "lines": the end that fits the T/C pattern
              ──► perspective warp to an upright window 480 px long, sample end left
              ──► linear light (gamma undone), luma-weighted (0.299 R + 0.587 G + 0.114 B)
              ──► profile along the flow, divided by a quadratic membrane baseline fitted away
                  from the lines ──► C and T found together at their known spacing; each line's
                  intensity = its integrated absorbance / (luma absorption x line width)
              ──► sharpness (C line width), noise, and the two halves of the window must agree

Nothing is looked for relative to the cassette's outline, so the window may sit anywhere on the
cassette, the cassette may have any shape or colour, lie at any angle, on a dark desk or a light
table. An absent line reads ~0, so "no C line" is a reading (judged invalid), not an error.

Intensity scale (the simulator's): a line of intensity i multiplies the bare
membrane's linear-light reflectance by 1 - i x (0.30, 0.80, 0.55) in R, G, B
across its 0.022 width, so 1.0 absorbs 80 % of the green light. The reader
profiles luma-weighted light, where a full line absorbs 0.622; luma is what
JPEG keeps at full resolution, so its chroma subsampling and quantisation
mostly cancel. The measurement integrates absorbance over the line, so
optical blur, which spreads a line without changing its area, does not
change the reading. A real cassette and camera need this scale calibrated
against reference cards (the profile's ``line_absorption``).

Refuse rather than guess: a photo is rejected (``StripReadError`` with a ``reason`` code, and a
message saying what to do) when no window of the profile's shape is found, its sample end cannot be
told, the window is under 90 px long, the JPEG quality is under 40 (``read_file``), the lines are
more than 0.032 window lengths from the profile's positions, the C line is blurred over more than
2.2 line widths, the window is too dark or clipped, the membrane between the lines is noisy
(> 0.015), or the two halves of the window disagree by more than 0.12 in line intensity (a shadow
edge or glare across it).

Judgement (competitive assay, docs/protocols/rapidtest-astm.md §6), on values rounded to the
3 decimals printed: C <= c_min -> invalid; else T/C <= positive_max ->
positive; T/C >= negative_min -> negative; otherwise suspicious.

Errors::

    DriverError
    └── StripReadError            the photo could not be read; the message says what to do
        ├── StripImageError       not a colour image / file unreadable or not an image
        ├── StripNotFoundError    no window of the profile's shape, or its sample end not told
        ├── StripLinesError       window found but it cannot be measured
        └── StripCaptureError     camera / video source cannot be opened or gives no frame
    StripProfileError             a cassette profile is missing, malformed or unusable

Modules: ``reader`` (the pipeline, the JPEG gate, the camera), ``profile`` (the cassette
profile format), ``geometry`` (find, straighten, orient the window), ``measure`` (ends,
lines, verdict), ``judgement`` (thresholds, the rule, the reading), ``calibrate`` (fit a
profile from photos with known results), ``errors``.
"""

from .errors import (
    StripCaptureError,
    StripImageError,
    StripLinesError,
    StripNotFoundError,
    StripProfileError,
    StripReadError,
)
from .judgement import Judgement, StripReading, StripThresholds, judge
from .profile import CassetteProfile, Orientation, builtin_profiles, load_profile, profile_to_toml
from .reader import StripReader, capture_from, jpeg_quality_estimate

__all__ = [
    "CassetteProfile",
    "Orientation",
    "Judgement",
    "StripCaptureError",
    "StripImageError",
    "StripLinesError",
    "StripNotFoundError",
    "StripProfileError",
    "StripReadError",
    "StripReader",
    "StripReading",
    "StripThresholds",
    "builtin_profiles",
    "capture_from",
    "load_profile",
    "profile_to_toml",
    "jpeg_quality_estimate",
    "judge",
]
