"""What a rapid-test analyzer reports: one simulated test (sample, readings, judgements against the
assay settings) as the ASTM E1394 message it sends — H, P, O (the sample), one R per test item with its C
comments (judgement first, then the raw reading), L. The session that sends it is
:mod:`simulators.rapidtest.simulator`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from firmware_bridge.astm import (
    Record,
    Repeats,
    assign_sequence_numbers,
    format_timestamp,
)
from simulators.rapidtest.assays import (
    ANIMAL_SAMPLES,
    GOLD_ITEMS,
    INVALID,
    NEGATIVE,
    PESTICIDE_ITEM,
    POSITIVE,
    PRODUCE_SAMPLES,
    GoldSettings,
    PesticideSettings,
    TestItem,
    inhibition_percent,
    judge_gold,
    judge_inhibition,
    simulate_gold,
    simulate_pesticide,
)

__all__ = ["Analyzer", "SimulatedTest", "build_test"]

# item, value, reference range "low^high", flag, status, comments
_Row = tuple[TestItem, str, str, str, str, list[str]]


@dataclass(frozen=True)
class SimulatedTest:
    """One finished test as the instrument saw it, before it is put on the wire."""

    number: int
    sample_id: str
    records: tuple[Record, ...]
    judgements: tuple[str, ...]



@dataclass(frozen=True)
class Analyzer:
    """Who the instrument is and how it judges: what every message it builds carries."""

    kind: str
    model: str
    instrument_id: str
    operator: str
    pesticide: PesticideSettings
    gold: GoldSettings


def build_test(analyzer: Analyzer, number: int, now: datetime, rng: random.Random) -> SimulatedTest:
    """Run test ``number`` (finished at ``now``) and build its ASTM message."""
    started = now - timedelta(minutes=3 if analyzer.kind == "pesticide" else 10)
    pool = PRODUCE_SAMPLES if analyzer.kind == "pesticide" else ANIMAL_SAMPLES
    sample_name, category = pool[rng.randrange(len(pool))]
    sample_id = f"S{number:06d}"
    description = f"{sample_name} ({category}), market stall {rng.randint(1, 40)}"
    judged = _pesticide_rows(analyzer.pesticide, rng) if analyzer.kind == "pesticide" else _gold_rows(analyzer.gold, rng)
    records = _records(analyzer, number, sample_id, description, started, now, judged)
    return SimulatedTest(number, sample_id, tuple(assign_sequence_numbers(records)), tuple(j for _, j in judged))


def _pesticide_rows(settings: PesticideSettings, rng: random.Random) -> list[tuple[_Row, str]]:
    """The enzyme-inhibition reading: one row, with its judgement."""
    reading = simulate_pesticide(rng)
    inhibition = inhibition_percent(reading.delta_control, reading.delta_sample)
    judgement = judge_inhibition(inhibition, settings)
    value = "" if inhibition is None else f"{inhibition:.1f}"
    flag = {POSITIVE: "H", NEGATIVE: "N"}.get(judgement, "")
    comments = [judgement,
                f"dA control {reading.delta_control:.3f} sample {reading.delta_sample:.3f}; "
                f"positive when inhibition {'>=' if settings.inclusive else '>'} "
                f"{settings.limit:g} %"]
    if not 0.3 <= reading.delta_control <= 0.8:
        comments.append("control dA outside 0.3-0.8: enzyme activity suspect")
    row = (PESTICIDE_ITEM, value, f"0^{settings.limit:g}", flag, "X" if judgement == INVALID else "F", comments)
    return [(row, judgement)]


def _gold_rows(settings: GoldSettings, rng: random.Random) -> list[tuple[_Row, str]]:
    """One to three colloidal-gold strips, each a row with its judgement."""
    rows: list[tuple[_Row, str]] = []
    count = rng.choice((1, 1, 2, 3))
    items = rng.sample(GOLD_ITEMS, count)
    for item in items:
        gold_reading = simulate_gold(rng)
        value_f, judgement = judge_gold(gold_reading, settings)
        flag = {POSITIVE: "A", NEGATIVE: "N"}.get(judgement, "A" if judgement != INVALID else "")
        row = (item, f"{value_f:.3f}", f"{settings.positive_max:g}^{settings.negative_min:g}",
               flag, "X" if judgement == INVALID else "F", [judgement, gold_reading.describe()])
        rows.append((row, judgement))
    return rows


def _records(analyzer: Analyzer, number: int, sample_id: str, description: str, started: datetime, now: datetime,
             judged: list[tuple[_Row, str]]) -> list[Record]:
    """H, P, O, then R and its C comments per row, then L."""
    rows = [row for row, _ in judged]
    ts_done = format_timestamp(now)
    ts_start = format_timestamp(started)
    records: list[Record] = [
        Record.from_fields("H", {3: f"M{number:06d}", 5: (analyzer.model, "1.0", analyzer.instrument_id),
                                 12: "P", 13: "LIS2-A2", 14: ts_done}),
        Record.from_fields("P", {2: "1"}),
    ]
    test_ids = [("", "", "", row[0].code, row[0].name) for row in rows]
    records.append(Record.from_fields("O", {
        2: "1", 3: sample_id, 5: test_ids[0] if len(test_ids) == 1 else Repeats(tuple(test_ids)),
        6: "R", 8: ts_start, 12: "N", 16: description, 26: "F"}))
    for item, value, ref_range, flag, status, comments in rows:
        low, high = ref_range.split("^")
        records.append(Record.from_fields("R", {
            2: "1", 3: ("", "", "", item.code, item.name, item.method, item.standard), 4: value,
            5: item.unit if value else "", 6: (low, high), 7: flag, 9: status, 11: analyzer.operator,
            12: ts_start, 13: ts_done, 14: analyzer.instrument_id}))
        for text in comments:
            records.append(Record.from_fields("C", {2: "1", 3: "I", 4: text, 5: "G"}))
    records.append(Record.from_fields("L", {2: "1", 3: "N"}))
    return records
