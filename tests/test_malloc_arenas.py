"""Issue 13's RSS creep: ``egw run`` shares two glibc malloc arenas among all its threads.

Without the cap every thread that first allocates gets an arena of its own (up to 8 per CPU), each
keeping the memory its thread freed: the service's RSS rose a step whenever a load peak brought a new
thread. Real processes throughout: a probe script with threads alive at once, and ``egw run`` itself
read from outside through /proc/PID/smaps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.station.allocator import limit_malloc_arenas, malloc_arena_count
from tests.conftest import egw_env, run_egw, spawn_egw

pytestmark = pytest.mark.skipif(malloc_arena_count() is None, reason="glibc only: other C libraries have no arenas")

ROOT = Path(__file__).resolve().parent.parent
THREADS = 8

# Eight threads alive at once, each allocating through malloc (bytes over 512 bytes bypass Python's own
# allocator); the count is taken while all of them still hold their memory.
PROBE = f"""
import sys, threading
from gateway.station.allocator import limit_malloc_arenas, malloc_arena_count
if sys.argv[1] == "limit":
    limit_malloc_arenas()
barrier = threading.Barrier({THREADS} + 1)
def work():
    held = [b"x" * 1000 for _ in range(100)]
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range({THREADS})]
for t in threads:
    t.start()
barrier.wait()
print(malloc_arena_count())
barrier.wait()
"""


def _arenas_in_probe(mode: str, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    environ["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


def test_threads_share_two_arenas_once_limited() -> None:
    assert _arenas_in_probe("none") > THREADS // 2  # the control: unlimited, the threads brought arenas
    assert _arenas_in_probe("limit") <= 2


def test_an_operators_own_setting_wins() -> None:
    assert limit_malloc_arenas(environ={"MALLOC_ARENA_MAX": "4"}) == "operator"
    assert limit_malloc_arenas(environ={"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == "operator"
    assert _arenas_in_probe("limit", MALLOC_ARENA_MAX="4") == 4


def _arena_heaps(pid: int) -> int:
    """glibc arenas other than the main one, seen from outside: each lives in a 64 MiB-aligned
    anonymous reservation of exactly 64 MiB (a read-write head, a no-access tail)."""
    heap = 64 << 20
    spans: dict[int, int] = {}
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if len(fields) > 5:  # a file or [heap]/[stack]: not an arena
            continue
        base = lo - lo % heap
        if lo == base or base in spans:
            spans[base] = spans.get(base, 0) + hi - lo
    return sum(1 for size in spans.values() if size == heap)


def _run_station(tmp_path: Path, **env: str) -> int:
    """Start ``egw run`` (screen, metrics, control socket), let it refresh its counters, and return its
    arena heaps."""
    data = tmp_path / "data"
    if not data.exists():
        run_egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-arenas", check=True)
    config = tmp_path / "gateway.toml"
    config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = "127.0.0.1:0"\n')
    environ = {k: v for k, v in egw_env().items() if k not in ("MALLOC_ARENA_MAX", "GLIBC_TUNABLES")}
    proc = spawn_egw("run", "-c", str(config), env={**environ, **env})
    try:
        ready = json.loads(proc.stdout.readline() or "{}")
        assert ready.get("event") == "ready", proc.stderr.read()
        time.sleep(2)  # the counters' refresh: a few round trips through the executor's threads
        return _arena_heaps(proc.pid)
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_egw_run_keeps_to_two_arenas(tmp_path: Path) -> None:
    assert _run_station(tmp_path, MALLOC_ARENA_MAX="16") >= 2  # the control: glibc's default on 2 CPUs
    assert _run_station(tmp_path) <= 1  # the main arena plus at most one more


# The reference platform raises glibc's mmap threshold so that gRPC's 1 MiB messages come from the heap
# and are reused, instead of being mapped, faulted in and returned to the kernel one by one. Seen from
# malloc_info: a 4 MiB block counts as an mmap before the setting and not after it.
MMAP_PROBE = """
import ctypes, re, sys, tempfile
from pathlib import Path
from protos.glibc_malloc import glibc
from simulators.platform.cli import LARGE_MESSAGE_MALLOC
from protos.glibc_malloc import set_unless_operator_chose
libc = glibc()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
def mmapped_blocks():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "info.xml"
        stream = libc.fopen(str(path).encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        return int(re.search(r'<total type="mmap" count="(\\d+)"', path.read_text()).group(1))
mapped_before = mmapped_blocks()
before = libc.malloc(4 << 20)
assert mmapped_blocks() == mapped_before + 1, "glibc's default should map a 4 MiB block"
mapped_before += 1
print(set_unless_operator_chose(LARGE_MESSAGE_MALLOC))
after = libc.malloc(4 << 20)
print(mapped_before, mmapped_blocks())
"""


def test_the_reference_platform_keeps_large_messages_on_the_heap_unless_the_operator_chose():
    env = {k: v for k, v in egw_env().items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", MMAP_PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "set"
    mapped_before, mapped_after = map(int, out[1].split())
    assert mapped_after == mapped_before, "the 4 MiB block after the setting was mapped, not taken from the heap"

    from protos.glibc_malloc import M_MMAP_THRESHOLD, set_unless_operator_chose
    assert set_unless_operator_chose({M_MMAP_THRESHOLD: 1 << 25}, {"MALLOC_MMAP_THRESHOLD_": "65536"}) == "operator"
    assert set_unless_operator_chose({M_MMAP_THRESHOLD: 1 << 25},
                                     {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}) == "operator"
