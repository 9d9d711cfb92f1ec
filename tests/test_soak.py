"""A short soak of ``egw run`` (bench/soak.py): two recorders unplugged, given new recordings and
plugged back every ~15 s (four times each), an analyzer sending a result every 2 s, ``egw status``
and ``egw ls`` polled beside the service. Real processes throughout: the platform, the USB/IP
recorder simulator, the ASTM analyzer simulator and the gateway.

What the long run found, held here: every replug docks again (an emptied recorder used to never
mount; a failed configure used to keep the USB/IP import, so retries met "busy"), file
descriptors and threads stay flat (each dock used to leak a handle on the deleted volume), a
recorder is one card on the station screen, every item made is receipted, no traceback anywhere.
The byte counter on the cards and RSS growth are reported by the full soak, not judged here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakOptions, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def test_replugged_recorders_dock_every_time_without_leaking(tmp_path: Path) -> None:
    options = SoakOptions(minutes=1.0, recorders=2, replug_every=15, record=2, recordings=2, analyzer_every=2,
                          poll_every=10, sample_every=2, settle=90, fd_noise=3, thread_noise=2)
    result = run(tmp_path, options, say=lambda line: None)
    report = "\n".join(result.report_lines())

    assert result.replugs >= 6, report  # 3-4 per recorder
    assert result.replugs_docked == result.replugs, report
    assert len(result.samples) >= 20, report
    assert abs(result.fd_drift) <= options.fd_noise, report
    assert abs(result.thread_drift) <= options.thread_noise, report
    assert result.max_cards_per_recorder == 1, report
    assert result.cards_left == 0, report
    assert result.recordings_made == 2 * 2 + result.replugs * 2, report
    assert result.recordings_stored == result.recordings_made, report
    assert result.analyzer_results > 0, report
    assert result.items_receipted == result.items_made == result.items == result.platform_items, report
    assert result.polls >= 10 and result.poll_failures == [], report
    assert result.tracebacks == [], report
