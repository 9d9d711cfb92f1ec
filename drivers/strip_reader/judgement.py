"""From C and T to a verdict: the thresholds, the protocol's judgement rule, and the reading handed back.

Kept apart from the image code so the rule of docs/protocols/rapidtest-astm.md §6 reads in
one place and is tested without a photo."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class Judgement(str, Enum):  # noqa: UP042 - StrEnum changes str(member) from "Judgement.X" to its value
    POSITIVE = "positive"
    SUSPICIOUS = "suspicious"
    NEGATIVE = "negative"
    INVALID = "invalid"


@dataclass(frozen=True)
class StripThresholds:
    """Judgement thresholds on T/C (docs/protocols/rapidtest-astm.md §6: C_min, A, B)."""

    c_min: float = 0.10
    positive_max: float = 0.70
    negative_min: float = 1.00

    def __post_init__(self) -> None:
        if not (math.isfinite(self.c_min) and math.isfinite(self.positive_max) and math.isfinite(self.negative_min)):
            raise ValueError("strip thresholds must be finite numbers")
        if self.c_min < 0:
            raise ValueError(f"c_min must be >= 0, got {self.c_min}")
        if self.positive_max > self.negative_min:
            raise ValueError(
                f"positive_max ({self.positive_max}) must not exceed negative_min ({self.negative_min}): "
                "T/C at or below A is positive, at or above B negative"
            )


def judge(c: float, t_over_c: float, thresholds: StripThresholds) -> Judgement:
    """The protocol's judgement, on values rounded to the 3 decimals that are printed.

    Rounding first keeps the printed line and the verdict consistent: a
    reading shown as ``T/C:0.700`` is judged as 0.700.
    """
    if round(c, 3) <= thresholds.c_min:
        return Judgement.INVALID
    ratio = round(t_over_c, 3)
    if ratio <= thresholds.positive_max:
        return Judgement.POSITIVE
    if ratio >= thresholds.negative_min:
        return Judgement.NEGATIVE
    return Judgement.SUSPICIOUS


@dataclass(frozen=True)
class StripReading:
    """One reading of one photo.

    ``confidence`` (0..1) falls with the membrane's measurement noise and with
    how far the found lines sit from where the design puts them; ``notes``
    say why it is not 1. ``image_sha256`` names the exact bytes read when the
    reading came from a file, so the reading can be tied to the evidence.
    """

    c: float
    t: float
    t_over_c: float
    judgement: Judgement
    thresholds: StripThresholds
    confidence: float
    notes: tuple[str, ...] = ()
    image_sha256: str | None = None

    def format(self) -> str:
        """The instrument's output string: ``C:x.xxx  T:x.xxx  T/C:x.xxx``."""
        return f"C:{self.c:.3f}  T:{self.t:.3f}  T/C:{self.t_over_c:.3f}"

    def to_json(self) -> dict[str, Any]:
        return {
            "c": round(self.c, 3),
            "t": round(self.t, 3),
            "t_over_c": round(self.t_over_c, 3),
            "judgement": self.judgement.value,
            "format": self.format(),
            "thresholds": asdict(self.thresholds),
            "confidence": round(self.confidence, 3),
            "notes": list(self.notes),
            "image_sha256": self.image_sha256,
        }
