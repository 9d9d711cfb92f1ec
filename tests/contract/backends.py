"""Which backends a family's contract runs over, and the hook that adds a real device.

Why a hook: the simulators prove the driver against our reading of the protocol; a
technician with the real instrument on the bench proves the reading. Setting
``EGW_CONTRACT_<FAMILY>_URL`` (e.g. ``EGW_CONTRACT_RAPIDTEST_URL=/dev/ttyUSB0``) adds that
URL as one more backend, id ``<family>[real]``, and the same test functions run against it.

A real device cannot be told to misbehave: a test that configures the simulator (a fault,
a finger on the sensor, a wrong password that would lock the recorder) is skipped on the
real backend with the option it needed in the reason. Tests that only observe run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

REAL = "real"


def url_variable(family: str) -> str:
    """``EGW_CONTRACT_<FAMILY>_URL``: the environment variable naming a real device for ``family``."""
    return f"EGW_CONTRACT_{family.upper()}_URL"


def real_url(family: str) -> str | None:
    """The URL a technician gave for ``family``'s real device, or None."""
    return os.environ.get(url_variable(family)) or None


def backend_params(family: str, simulated: Iterable[str]) -> list[Any]:
    """One pytest param per backend: ids ``family[backend]``, plus ``family[real]`` when the hook is set."""
    names = list(simulated)
    if real_url(family):
        names.append(REAL)
    return [pytest.param(name, id=f"{family}[{name}]") for name in names]


def refuse_on_real(backend: str, options: Mapping[str, Any]) -> None:
    """Skip on the real backend when the test needs the simulator configured: a real device ignores options."""
    if backend == REAL and options:
        pytest.skip(f"needs a simulated device configured with {', '.join(sorted(options))}")


def simulated_only(backend: str, why: str) -> None:
    """Skip on the real backend when the test needs the simulator's own view (or would damage a device)."""
    if backend == REAL:
        pytest.skip(f"needs the simulator: {why}")
