"""A deterministic set of strip photos and their truths on disk.

Photo ``index`` of ``seed`` is drawn from its own ``SeedSequence([seed, index])``
stream, so any single photo can be re-drawn without the others and adding
photos to a set never changes the ones already there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from simulators.strips.render import (
    DEFAULT_THRESHOLDS,
    RenderParams,
    StripTruth,
    judge,
    random_params,
    render_jpeg,
)

__all__ = ["generate", "photo_spec", "random_truth", "truth_record"]


def random_truth(rng: np.random.Generator) -> StripTruth:
    """Line intensities across the whole judgement range, with some invalid cards.

    One card in ten has a control line too weak to count (invalid); the rest
    have a clear C line and a T/C anywhere from 0 (strong positive: no T line
    at all) to about 1.3 (clear negative).
    """
    if rng.random() < 0.1:
        c = float(rng.uniform(0.0, 0.07))
        t = float(rng.uniform(0.0, 0.8))
        return StripTruth(c=round(c, 4), t=round(t, 4))
    c = float(rng.uniform(0.35, 1.0))
    ratio = float(rng.uniform(0.0, 1.3)) if rng.random() > 0.08 else 0.0
    t = min(1.0, c * ratio)
    return StripTruth(c=round(c, 4), t=round(t, 4))


def photo_spec(seed: int, index: int) -> tuple[StripTruth, RenderParams]:
    """The truth and rendering parameters of photo ``index`` (1-based) of set ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    truth = random_truth(rng)
    params = random_params(rng)
    return truth, params


def truth_record(truth: StripTruth, params: RenderParams, *, seed: int, index: int) -> dict[str, Any]:
    return {
        "c": truth.c,
        "t": truth.t,
        "t_over_c": round(truth.t_over_c, 6),
        "judgement": judge(truth.c, truth.t),
        "thresholds": dict(DEFAULT_THRESHOLDS),
        "format": truth.format(),
        "seed": seed,
        "index": index,
        "render": params.to_json(),
    }


def generate(out_dir: Path, count: int, seed: int = 0) -> list[Path]:
    """Write ``strip_0001.jpg`` … and their ``.json`` truths into ``out_dir``; return the JPEG paths.

    Each file is written to a temporary name and renamed, so a reader never
    sees half a photo.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for index in range(1, count + 1):
        truth, params = photo_spec(seed, index)
        stem = out_dir / f"strip_{index:04d}"
        jpg = stem.with_suffix(".jpg")
        meta = stem.with_suffix(".json")
        _atomic_write(jpg, render_jpeg(truth, params))
        record = truth_record(truth, params, seed=seed, index=index)
        _atomic_write(meta, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        paths.append(jpg)
    return paths


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
