"""Simulated food-safety rapid-test analyzers (pesticide residue, colloidal gold) speaking ASTM.

``RapidTestSimulator(kind, ...).serve_pty()`` / ``.serve_tcp()`` start one on a
real pty or TCP socket and return the URL a driver opens; ``egw simulate
rapidtest`` runs one from the command line (see :mod:`simulators.rapidtest.cli`).
"""

from simulators.rapidtest.simulator import (
    FAULTS,
    HOSTILE_FAULTS,
    KINDS,
    LINK_FAULTS,
    RapidTestSimulator,
    SimulatedTest,
)

__all__ = ["FAULTS", "HOSTILE_FAULTS", "KINDS", "LINK_FAULTS", "RapidTestSimulator", "SimulatedTest"]
