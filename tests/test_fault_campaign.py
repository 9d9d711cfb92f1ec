"""A reduced fault campaign (bench/faults.py): the whole station on loopback, faults injected, then counted.

Two short trials: SIGKILL of ``egw run``, SIGKILL and restart of the platform, a recorder unplugged
mid-copy, and the private broker stopped for 2 s. Pass = nothing missing, nothing corrupted, nothing
deleted from a recorder before its receipt, custody log verified.
"""

import random
import re

from bench.faults import TrialOptions, print_report, run_trial, summary_line


def test_two_short_trials_lose_nothing(tmp_path):
    opts = TrialOptions(faults=("kill", "platform", "unplug", "broker"), recorders=2, recordings=2, fill_mb=24.0, tests=3,
                        broker_down_s=2.0, fault_window_s=4.0, settle_timeout_s=60.0)
    rng = random.Random(9)
    reports = []
    lines: list[str] = []
    for i in (1, 2):
        report = run_trial(i, tmp_path, opts, random.Random(rng.getrandbits(64)), lines.append)
        print_report(report, lines.append)
        reports.append(report)
    text = "\n".join(lines)
    for r in reports:
        assert r.expected == 2 * 3 + 3, text  # 2 recordings + 1 bulk file per recorder, 3 rapid tests
        assert any("SIGKILL egw run" in e for e in r.events) and any("SIGKILL platform" in e for e in r.events), text
        assert any("unplug 1-" in e for e in r.events) and any("mosquitto restarted" in e for e in r.events), text
        assert r.delivered == r.expected and not r.missing, text
        assert not r.corrupted and not r.deleted_before_receipt, text
        assert r.custody_ok, text
    last = summary_line(reports)
    assert re.fullmatch(r"missing=0 corrupted=0 deleted_before_receipt=0 duplicates=\d+ custody=ok", last), text
