"""glibc malloc arenas for the long-running service: at most two, set when ``egw run`` starts.

Why (issue 13's soak): glibc gives every thread that allocates its own malloc arena, up to eight per CPU
(sixteen on a 2-CPU station), and an arena keeps the memory its thread freed for the next allocation
instead of returning it. ``egw run`` has a changing crowd of threads: gRPC's event engine and timer
threads, a thread per dock, SQLite and uplink pools, and the asyncio executor, which grows a worker at a
time (up to CPU count + 4) whenever a burst of work finds every worker busy. Each first-time thread
brought a new arena and its few MB of retained memory, so RSS rose in steps that came when the load
peaked, late in a run as well as in the first minute. Two 30-minute soaks side by side under the same
load (bench/results/soak-30min-arena-cap.txt, soak-30min-glibc-default-arenas.txt): +11.4 MB/h with the
cap, +41.3 MB/h without (15 arena heaps holding 15 MB by 25 min). With two arenas threads share: a new
thread costs its stack, not a new heap. Speed is expected to stay: copies and hashing reuse their buffers
and Python objects come from Python's own allocator (the throughput benchmarks were not re-run).

An operator's own ``MALLOC_ARENA_MAX`` or ``GLIBC_TUNABLES=glibc.malloc.arena_max=…`` wins: nothing is
changed then. On a C library other than glibc (musl has no arenas) nothing is done either.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from protos.glibc_malloc import M_ARENA_MAX, glibc, set_unless_operator_chose

__all__ = ["ARENA_MAX", "limit_malloc_arenas", "malloc_arena_count"]

ARENA_MAX = 2


def limit_malloc_arenas(limit: int = ARENA_MAX, environ: Mapping[str, str] = os.environ) -> str:
    """Cap glibc's malloc arenas at ``limit`` before the service starts its threads.

    Returns what happened, for the start-up log: ``"set"``, ``"operator"`` (the environment already
    chooses: left alone), ``"not glibc"`` or ``"refused"`` (mallopt said no). Must run before many
    threads have allocated: glibc fixes its arena limit when the ninth arena is wanted.
    """
    return set_unless_operator_chose({M_ARENA_MAX: limit}, environ)


def malloc_arena_count() -> int | None:
    """How many malloc arenas this process has now (glibc's ``malloc_info``), None when not glibc.

    For the memory reports of ``EGW_DEBUG_TRACEMALLOC`` and for tests.
    """
    libc = glibc()
    if libc is None:
        return None
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.TemporaryDirectory(prefix="egw-malloc-") as tmp:
        path = Path(tmp) / "info.xml"
        stream = libc.fopen(str(path).encode(), b"w")
        if not stream:
            return None
        try:
            libc.malloc_info(0, stream)
        finally:
            libc.fclose(stream)
        return path.read_text().count("<heap nr=")
