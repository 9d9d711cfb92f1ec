"""Debug only: periodic memory reports of ``egw run`` for soak investigations (``EGW_DEBUG_TRACEMALLOC``).

Never enabled in production: tracing every allocation costs CPU and memory. Each report compares the
moment with a baseline taken one period after the start, so what grows stands out from what was
merely allocated once at start-up (imports, caches warming).
"""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path

from gateway.station.allocator import malloc_arena_count

TOP = 15


def _rss_lines() -> list[str]:
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text().splitlines()
    except OSError:
        return []
    keep = ("Rss:", "Pss_Anon:", "Anonymous:", "Private_Dirty:")
    return [line for line in rollup if line.startswith(keep)]


def _type_counts() -> Counter[str]:
    return Counter(type(o).__qualname__ for o in gc.get_objects())


def _thread_names() -> Counter[str]:
    return Counter(t.name.rstrip("0123456789_") for t in threading.enumerate())


def _os_thread_names() -> Counter[str]:
    """Every thread the kernel counts (the soak's number), native ones (gRPC, SQLite) included."""
    names: Counter[str] = Counter()
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            names[comm.read_text().strip().rstrip("0123456789_")] += 1
        except OSError:
            pass
    return names


def _report(start: tracemalloc.Snapshot, types0: Counter[str], began: float) -> list[str]:
    now = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    traced, peak = tracemalloc.get_traced_memory()
    lines = [f"=== {time.monotonic() - began:.0f} s: traced {traced >> 10} KiB (peak {peak >> 10} KiB)"]
    lines += [f"  {line}" for line in _rss_lines()]
    lines.append(f"  malloc arenas {malloc_arena_count()}")
    lines.append(f"  threads {threading.active_count()}: {dict(_thread_names())}")
    lines.append(f"  OS threads: {dict(_os_thread_names())}")
    types = _type_counts()
    grown = sorted(((types[k] - types0.get(k, 0), k) for k in types), reverse=True)[:TOP]
    lines.append("  object types grown: " + ", ".join(f"{k} {d:+d} (={types[k]})" for d, k in grown if d > 0))
    for stat in now.compare_to(start, "lineno")[:TOP]:
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {stat.traceback[0]}")
    for stat in now.compare_to(start, "traceback")[:3]:
        lines.append(f"  top site {stat.size_diff / 1024:+.1f} KiB, allocated from:")
        lines += [f"      {frame}" for frame in stat.traceback.format()[-20:]]
    return lines


def dump_forever(path: Path, every: float) -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(os.environ.get("EGW_DEBUG_TRACEMALLOC_FRAMES", "10")))
    began = time.monotonic()
    time.sleep(every)  # the baseline after a warm-up: imports and first docks are not growth
    start = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    types0 = _type_counts()
    with open(path, "a") as fh:
        fh.write(f"=== baseline at {time.monotonic() - began:.0f} s\n")
    while True:
        time.sleep(every)
        with open(path, "a") as fh:
            fh.write("\n".join(_report(start, types0, began)) + "\n")
