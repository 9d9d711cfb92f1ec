"""glibc's ``mallopt``, shared by the gateway (arena cap) and the reference platform (large messages).

Settings made here apply from the call on, for the whole process; an operator's own environment
(``MALLOC_*`` variables or ``GLIBC_TUNABLES``) always wins and is left alone. On a C library other
than glibc nothing is done.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

__all__ = ["M_ARENA_MAX", "M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD", "glibc", "set_unless_operator_chose"]

# mallopt parameter numbers in glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

# what the operator would write to choose a parameter themselves: (MALLOC_* variable, GLIBC_TUNABLES name)
_OPERATOR_NAMES = {
    M_TRIM_THRESHOLD: ("MALLOC_TRIM_THRESHOLD_", "malloc.trim_threshold"),
    M_MMAP_THRESHOLD: ("MALLOC_MMAP_THRESHOLD_", "malloc.mmap_threshold"),
    M_ARENA_MAX: ("MALLOC_ARENA_MAX", "malloc.arena_max"),
}


def glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (it has ``gnu_get_libc_version``), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - probe: only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def set_unless_operator_chose(settings: Mapping[int, int], environ: Mapping[str, str] = os.environ) -> str:
    """``mallopt`` each (parameter, value), unless the environment already chooses any of them.

    Returns what happened, for the start-up log: ``"set"``, ``"operator"`` (left alone), ``"not glibc"``
    or ``"refused"`` (mallopt said no to one of them)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    for parameter in settings:
        variable, tunable = _OPERATOR_NAMES[parameter]
        if variable in environ or tunable in tunables:
            return "operator"
    libc = glibc()
    if libc is None:
        return "not glibc"
    results = [libc.mallopt(parameter, value) for parameter, value in settings.items()]
    return "set" if all(result == 1 for result in results) else "refused"
