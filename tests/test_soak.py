"""A short soak of ``egw run`` (bench/soak.py): two recorders unplugged, given new recordings and
plugged back every ~15 s (four times each), an analyzer sending a result every 2 s, ``egw status``
and ``egw ls`` polled beside the service. Real processes throughout: the platform, the USB/IP
recorder simulator, the ASTM analyzer simulator and the gateway. One run, judged by three tests.

What the long run found, held here: every replug docks again (an emptied recorder used to never
mount; a failed configure used to keep the USB/IP import, so retries met "busy"), file
descriptors and threads stay flat (each dock used to leak a handle on the deleted volume), every
item made is receipted, no traceback anywhere, and a recorder is one card on the station screen.
The card byte counters and RSS growth are reported by the full soak, not judged here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakOptions, SoakResult, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

OPTIONS = SoakOptions(minutes=1.0, recorders=2, replug_every=15, record=2, recordings=2, analyzer_every=2,
                      poll_every=10, sample_every=2, settle=90, fd_noise=3, thread_noise=3)


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[SoakResult, str]:
    result = run(tmp_path_factory.mktemp("soak"), OPTIONS, say=lambda line: None)
    return result, "\n".join(result.report_lines())


def test_every_replug_docks_and_every_item_is_receipted(soak: tuple[SoakResult, str]) -> None:
    result, report = soak
    assert result.replugs >= 6, report  # 3-4 per recorder
    assert result.replugs_docked == result.replugs, report
    assert result.recordings_made == 2 * 2 + result.replugs * 2, report
    assert result.recordings_stored == result.recordings_made, report
    assert result.analyzer_results > 0, report
    assert result.items_receipted == result.items_made == result.items == result.platform_items, report
    assert result.polls >= 10 and result.poll_failures == [], report
    assert result.tracebacks == [], report


def test_file_descriptors_and_threads_stay_flat(soak: tuple[SoakResult, str]) -> None:
    result, report = soak
    assert len(result.samples) >= 20, report
    assert abs(result.fd_drift) <= OPTIONS.fd_noise, report
    assert abs(result.thread_drift) <= OPTIONS.thread_noise, report
    assert result.simulator_fds and abs(result.simulator_fd_drift) <= OPTIONS.fd_noise, report


def test_a_recorder_is_one_card_on_the_station_screen(soak: tuple[SoakResult, str]) -> None:
    result, report = soak
    assert result.max_cards_per_recorder == 1, report
    assert result.cards_left == 0, report
