"""Simulated food-safety rapid-test analyzers (pesticide residue, colloidal gold) speaking ASTM.

``RapidTestSimulator(kind, ...).serve_pty()`` / ``.serve_tcp()`` start one on a
real pty or TCP socket and return the URL a driver opens; ``egw simulate
rapidtest`` runs one from the command line (see :mod:`simulators.rapidtest.cli`).
"""

from simulators.rapidtest.faults import FAULTS, HOSTILE_FAULTS, LINK_FAULTS
from simulators.rapidtest.messages import SimulatedTest
from simulators.rapidtest.simulator import KINDS, RapidTestSimulator

__all__ = ["FAULTS", "HOSTILE_FAULTS", "KINDS", "LINK_FAULTS", "RapidTestSimulator", "SimulatedTest"]
