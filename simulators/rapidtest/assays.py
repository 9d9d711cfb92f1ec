"""The chemistry a food-safety rapid tester does before it talks ASTM.

Two instrument families, modelled closely enough that their judgements
follow the published rules (see docs/protocols/rapidtest-astm.md §6):

* pesticide residue by enzyme inhibition (GB/T 5009.199-2003): absorbance
  rises as cholinesterase turns over its substrate; organophosphate and
  carbamate residues inhibit the enzyme, so the sample's ΔA is smaller than
  the control's.  inhibition % = (ΔA_control − ΔA_sample) / ΔA_control × 100;
  ≥ 50 % is positive (the operator may choose > 50 %, as some upload tools
  do); a negative inhibition is clamped to 0; > 100 % or a control ΔA ≤ 0 is
  an invalid test.
* colloidal-gold strips: the reader measures the control (C) and test (T)
  line intensities.  The assay is competitive — analyte blocks the T line —
  so a *weak* T means positive.  C ≤ C_min: invalid card; T (or T/C) ≤ A:
  positive; ≥ B: negative; between: suspicious.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "POSITIVE", "NEGATIVE", "SUSPICIOUS", "INVALID",
    "PesticideSettings", "PesticideReading", "inhibition_percent", "judge_inhibition", "simulate_pesticide",
    "GoldSettings", "GoldReading", "judge_gold", "simulate_gold",
    "TestItem", "PESTICIDE_ITEM", "GOLD_ITEMS", "SAMPLES", "PRODUCE_SAMPLES", "ANIMAL_SAMPLES",
]

POSITIVE = "positive"
NEGATIVE = "negative"
SUSPICIOUS = "suspicious"
INVALID = "invalid"


@dataclass(frozen=True)
class TestItem:
    code: str
    name: str
    method: str
    standard: str
    unit: str


PESTICIDE_ITEM = TestItem("OPPEST", "Organophosphate and carbamate pesticides", "enzyme inhibition",
                          "GB/T 5009.199-2003", "%")
GOLD_ITEMS = (
    TestItem("CLB", "Clenbuterol", "colloidal gold T/C", "colloidal gold card (simulated)", "T/C"),
    TestItem("RAC", "Ractopamine", "colloidal gold T/C", "colloidal gold card (simulated)", "T/C"),
    TestItem("SAL", "Salbutamol", "colloidal gold T/C", "colloidal gold card (simulated)", "T/C"),
    TestItem("MG", "Malachite green", "colloidal gold T/C", "colloidal gold card (simulated)", "T/C"),
)
PRODUCE_SAMPLES = (
    ("Spinach", "leaf vegetable"), ("Chinese cabbage", "leaf vegetable"), ("Celery", "stem vegetable"),
    ("Cowpea", "legume vegetable"), ("Leek", "allium vegetable"), ("Strawberry", "fruit"),
)
ANIMAL_SAMPLES = (
    ("Pork", "meat"), ("Pork liver", "offal"), ("Beef", "meat"), ("Grass carp", "aquatic product"),
    ("Shrimp", "aquatic product"),
)
SAMPLES = PRODUCE_SAMPLES + ANIMAL_SAMPLES


# ---------------------------------------------------------------- pesticide


@dataclass(frozen=True)
class PesticideSettings:
    """Judgement rule: positive when inhibition ≥ ``limit`` (or > when ``inclusive`` is False)."""

    limit: float = 50.0
    inclusive: bool = True


@dataclass(frozen=True)
class PesticideReading:
    """Absorbance at ~412 nm at the start and end of the reaction, control and sample."""

    control_start: float
    control_end: float
    sample_start: float
    sample_end: float

    @property
    def delta_control(self) -> float:
        return self.control_end - self.control_start

    @property
    def delta_sample(self) -> float:
        return self.sample_end - self.sample_start


def inhibition_percent(delta_control: float, delta_sample: float) -> float | None:
    """Inhibition %, clamped at 0; None when the control shows no enzyme activity (ΔA ≤ 0)."""
    if delta_control <= 0:
        return None
    value = (delta_control - delta_sample) / delta_control * 100.0
    return max(value, 0.0)


def judge_inhibition(inhibition: float | None, settings: PesticideSettings = PesticideSettings()) -> str:
    if inhibition is None or inhibition > 100.0:
        return INVALID
    if inhibition > settings.limit or (settings.inclusive and inhibition == settings.limit):
        return POSITIVE
    return NEGATIVE


def simulate_pesticide(rng: random.Random) -> PesticideReading:
    """A plausible reading: mostly clean samples, some contaminated, the odd broken run."""
    control_start = round(rng.uniform(0.20, 0.40), 3)
    delta_control = round(rng.uniform(0.30, 0.80), 3)
    roll = rng.random()
    if roll < 0.03:
        delta_control = 0.0                                # dead enzyme / no substrate
        target = 0.0
    elif roll < 0.06:
        target = rng.uniform(101.0, 120.0)                 # sample darker than blank: invalid
    elif roll < 0.30:
        target = rng.uniform(50.0, 95.0)                   # residue present
    else:
        target = rng.uniform(-10.0, 45.0)                  # clean (negative values clamp to 0)
    delta_sample = round(delta_control * (1 - target / 100.0), 3)
    sample_start = round(rng.uniform(0.20, 0.40), 3)
    return PesticideReading(control_start, round(control_start + delta_control, 3),
                            sample_start, round(sample_start + delta_sample, 3))


# ---------------------------------------------------------------- colloidal gold


@dataclass(frozen=True)
class GoldSettings:
    """C_min for a valid card; A (≤ positive) and B (≥ negative) on T/C, or on T for method 'T'."""

    c_min: float = 0.10
    positive_max: float = 0.30
    negative_min: float = 0.60
    method: str = "T/C"

    def __post_init__(self) -> None:
        if self.method not in ("T/C", "T"):
            raise ValueError(f"gold method {self.method!r} must be 'T/C' or 'T'")
        if not self.positive_max < self.negative_min:
            raise ValueError("the positive threshold A must be below the negative threshold B")


@dataclass(frozen=True)
class GoldReading:
    c: float
    t: float

    @property
    def ratio(self) -> float:
        return self.t / self.c if self.c > 0 else 0.0

    def describe(self) -> str:
        """The reader's own summary line: ``C:x.xxx  T:x.xxx  T/C:x.xxx``."""
        return f"C:{self.c:.3f}  T:{self.t:.3f}  T/C:{self.ratio:.3f}"


def judge_gold(reading: GoldReading, settings: GoldSettings = GoldSettings()) -> tuple[float, str]:
    """(value used for the judgement, judgement)."""
    value = reading.ratio if settings.method == "T/C" else reading.t
    if reading.c <= settings.c_min:
        return value, INVALID
    if value <= settings.positive_max:
        return value, POSITIVE
    if value >= settings.negative_min:
        return value, NEGATIVE
    return value, SUSPICIOUS


def simulate_gold(rng: random.Random) -> GoldReading:
    c = round(rng.uniform(0.6, 1.2), 3)
    roll = rng.random()
    if roll < 0.03:
        c = round(rng.uniform(0.0, 0.09), 3)                # no control line: invalid card
        ratio = rng.uniform(0.0, 1.0)
    elif roll < 0.15:
        ratio = rng.uniform(0.05, 0.28)                     # positive
    elif roll < 0.25:
        ratio = rng.uniform(0.32, 0.58)                     # suspicious
    else:
        ratio = rng.uniform(0.62, 1.10)                     # negative
    return GoldReading(c, round(c * ratio, 3))
