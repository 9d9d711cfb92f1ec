"""Judgement rules of the simulated analyzers (docs/protocols/rapidtest-astm.md §6)."""

from __future__ import annotations

import random

import pytest

from simulators.rapidtest.assays import (
    INVALID,
    NEGATIVE,
    POSITIVE,
    SUSPICIOUS,
    GoldReading,
    GoldSettings,
    PesticideSettings,
    inhibition_percent,
    judge_gold,
    judge_inhibition,
    simulate_gold,
    simulate_pesticide,
)


def test_inhibition_formula_gb_t_5009_199():
    assert inhibition_percent(0.500, 0.250) == pytest.approx(50.0)
    assert inhibition_percent(0.400, 0.150) == pytest.approx(62.5)


def test_negative_inhibition_clamps_to_zero_and_dead_control_is_invalid():
    assert inhibition_percent(0.4, 0.5) == 0.0
    assert inhibition_percent(0.0, 0.1) is None
    assert judge_inhibition(None) == INVALID
    assert judge_inhibition(inhibition_percent(0.4, -0.05)) == INVALID  # 112.5 % > 100


@pytest.mark.parametrize("value, inclusive, expected", [
    (50.0, True, POSITIVE), (50.0, False, NEGATIVE), (49.9, True, NEGATIVE), (50.1, False, POSITIVE),
    (100.0, True, POSITIVE), (0.0, True, NEGATIVE),
])
def test_pesticide_limit_operator_is_configurable(value, inclusive, expected):
    assert judge_inhibition(value, PesticideSettings(50.0, inclusive)) == expected


@pytest.mark.parametrize("c, t, expected", [
    (0.05, 0.5, INVALID), (0.10, 0.01, INVALID), (1.0, 0.30, POSITIVE), (1.0, 0.10, POSITIVE),
    (1.0, 0.45, SUSPICIOUS), (1.0, 0.60, NEGATIVE), (0.8, 0.8, NEGATIVE),
])
def test_gold_judgement_t_over_c(c, t, expected):
    assert judge_gold(GoldReading(c, t))[1] == expected


def test_gold_judgement_on_t_alone():
    settings = GoldSettings(method="T")
    assert judge_gold(GoldReading(1.0, 0.2), settings) == (0.2, POSITIVE)
    assert judge_gold(GoldReading(0.5, 0.7), settings) == (0.7, NEGATIVE)
    assert GoldReading(0.812, 0.203).describe() == "C:0.812  T:0.203  T/C:0.250"
    with pytest.raises(ValueError):
        GoldSettings(positive_max=0.7, negative_min=0.6)


def test_simulated_readings_cover_every_judgement():
    rng = random.Random(7)
    pesticide = {judge_inhibition(inhibition_percent(r.delta_control, r.delta_sample))
                 for r in (simulate_pesticide(rng) for _ in range(500))}
    gold = {judge_gold(simulate_gold(rng))[1] for _ in range(500)}
    assert pesticide == {POSITIVE, NEGATIVE, INVALID}
    assert gold == {POSITIVE, NEGATIVE, SUSPICIOUS, INVALID}


@pytest.mark.parametrize("kind", ["pesticide", "gold"])
def test_simulator_messages_are_well_formed_e1394(kind):
    from firmware_bridge.astm import check_structure, decode_message, encode_message
    from simulators.rapidtest import RapidTestSimulator

    sim = RapidTestSimulator(kind, seed=9)
    for _ in range(50):
        test = sim.make_test()
        check_structure(test.records)
        assert decode_message(encode_message(test.records)) == list(test.records)
        results = [r for r in test.records if r.type == "R"]
        assert len(results) == len(test.judgements) >= 1
        for record, judgement in zip(results, test.judgements):
            assert (record.component(9) == "X") == (judgement == INVALID)
