"""Colloidal-gold test-strip photo simulator: synthetic cassette photos with known line intensities.

``designs.py`` is a second, independent generator of several other cassette designs (for the profiles).

``egw simulate strips --out DIR --count N [--seed S]`` writes ``strip_0001.jpg``
… and beside each ``strip_0001.json`` holding the truth (C, T, T/C, the
judgement under the default thresholds) and every rendering parameter.
"""

from simulators.strips.render import (
    DEFAULT_THRESHOLDS,
    RenderParams,
    StripTruth,
    judge,
    random_params,
    render,
    render_jpeg,
)
from simulators.strips.dataset import generate, photo_spec, random_truth

__all__ = [
    "DEFAULT_THRESHOLDS",
    "RenderParams",
    "StripTruth",
    "generate",
    "judge",
    "photo_spec",
    "random_params",
    "random_truth",
    "render",
    "render_jpeg",
]
