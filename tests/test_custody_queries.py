"""Custody queries match a recorder's serial exactly: a serial is data, never a pattern.

Before the custody repository, adoption looked the last ``docked`` event up with
``entry LIKE '%"serial":"…"%'``: ``_`` and ``%`` in a serial are wildcards there, so a
recorder adopted after a restart could inherit another recorder's officer and clock offset
(which then goes into the manifest of every recording it ingests). Over the BLOB column that
``LIKE`` matched nothing at all, so adoption lost the recorder's own officer and offset too."""

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import DeviceError
from gateway.evidence.evidence_service import EvidenceService
from gateway.workflows.dock import DockState, DockWorkflow
from tests.conftest import run_egw


def docked(service: EvidenceService, serial: str, officer: str, offset: float) -> None:
    service.record_event(None, "docked", {"device_id": f"bodycam-{serial}", "serial": serial, "officer_no": officer,
                                          "clock_offset_s": offset, "device_time": None, "gateway_time": None,
                                          "zfy_info_hex": ""})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("custody") / "gw"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    return data


def test_adopting_a_recorder_recovers_the_officer_and_clock_offset_of_its_last_dock(data_dir: Path, tmp_path: Path) -> None:
    """The lookup must find the event at all: ``LIKE`` over the BLOB column matched nothing, so every
    adopted recorder lost its officer and clock offset."""
    with EvidenceService(data_dir) as service:
        docked(service, "CD2E", "officer-old", 1.0)
        docked(service, "CD2E", "officer-new", 7200.0)
        session = DockState(url="volume://CD2E")
        workflow = DockWorkflow(service, locator=str(tmp_path / "nothing-mounted" / "{serial}"))
        with pytest.raises(DeviceError):
            workflow.adopt("CD2E", session)
        assert (session.officer_no, session.clock_offset_s) == ("officer-new", 7200.0)


def test_adopting_a_serial_with_an_underscore_does_not_inherit_another_recorders_dock(data_dir: Path, tmp_path: Path) -> None:
    with EvidenceService(data_dir) as service:
        docked(service, "AB1C", "officer-of-AB1C", 3600.0)  # "A_1C" would match this under LIKE
        session = DockState(url="volume://A_1C")
        workflow = DockWorkflow(service, locator=str(tmp_path / "nothing-mounted" / "{serial}"))
        with pytest.raises(DeviceError):
            workflow.adopt("A_1C", session)  # nothing is mounted: it stops after the custody lookup
        assert session.officer_no != "officer-of-AB1C"
        assert session.clock_offset_s is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(serials=st.lists(st.text(alphabet="AB_%\\\"1", min_size=1, max_size=5), min_size=1, max_size=4, unique=True),
       probe=st.text(alphabet="AB_%\\\"1", min_size=1, max_size=5))
def test_last_dock_of_a_serial_is_that_serial_and_only_it(data_dir: Path, serials: list[str], probe: str) -> None:
    with EvidenceService(data_dir) as service:
        for n, serial in enumerate(serials):
            docked(service, serial, f"{serial}#{n}", float(n))
        found = service.custody.last_docked(probe)
        if probe in serials:
            assert found is not None and found["officer_no"] == f"{probe}#{serials.index(probe)}"
        else:
            older = found is None or found["serial"] == probe  # docked by an earlier example: still exact
            assert older, found


def test_a_redocked_recording_already_evidence_is_confirmed_by_digest_not_copied_again(data_dir: Path, tmp_path: Path) -> None:
    """An interrupted dock is re-docked (adopted here): what is already evidence is hashed on the device and
    matched, never copied into the store a second time. (A digest compared against a (digest, size) pair
    made every re-dock copy everything again.)"""
    volume = tmp_path / "volumes" / "EF01"
    volume.mkdir(parents=True)
    (volume / "clip-0001.mp4").write_bytes(b"recording bytes " * 4096)

    class CountingService(EvidenceService):
        copies = 0

        def ingest_stream(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            type(self).copies += 1
            return super().ingest_stream(*args, **kwargs)  # type: ignore[arg-type]

    with CountingService(data_dir) as service:
        workflow = DockWorkflow(service, locator=str(tmp_path / "volumes" / "{serial}"), release_policy="never")
        first, again = DockState(url="volume://EF01"), DockState(url="volume://EF01")
        workflow.adopt("EF01", first)
        workflow.adopt("EF01", again)
    assert CountingService.copies == 1
    assert [r.copied for r in first.recordings] == [True] and [r.copied for r in again.recordings] == [False]
    assert again.recordings[0].evidence_id == first.recordings[0].evidence_id
