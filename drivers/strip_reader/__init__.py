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

Modules: ``reader`` (the pipeline, the JPEG gate, the camera), ``geometry`` (the
cassette design; find, straighten, orient), ``measure`` (window, lines, verdict),
``judgement`` (thresholds, the rule, the reading), ``errors``.
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
