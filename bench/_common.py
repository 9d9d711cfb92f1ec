"""Helpers shared by the benchmarks: sample files, a reference tool's throughput, peak RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

MB = 1_000_000


def make_files(directory: Path, count: int, size: int) -> list[Path]:
    """Random (incompressible) files, written once and reused across runs."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    block = os.urandom(1 << 20)
    for i in range(count):
        path = directory / f"bench-{i:03d}.bin"
        if not path.exists() or path.stat().st_size != size:
            with open(path, "wb") as fh:
                for j in range(size // len(block)):
                    fh.write(block[:16] + j.to_bytes(8, "big") + i.to_bytes(8, "big") + block[32:])
        paths.append(path)
    return paths


def openssl_sha256_mbps(paths: list[Path]) -> float:
    """``openssl dgst -sha256`` over the same files: the hashing limit of this machine."""
    total = sum(p.stat().st_size for p in paths)
    subprocess.run(["openssl", "dgst", "-sha256", str(paths[0])], check=True, capture_output=True)  # warm up
    started = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", *map(str, paths)], check=True, capture_output=True)
    return total / (time.perf_counter() - started) / MB


def peak_rss_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    """The 1/5/15-minute load average, quoted next to every figure: this machine is shared."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
