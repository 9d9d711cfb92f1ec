"""Helpers shared by the benchmarks: sample files, a reference tool's throughput, peak RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

# Measure egw as it is installed: pip compiles its bytecode once, so a process does not compile our
# source at every start. With PYTHONDONTWRITEBYTECODE (set in some shells and images) every egw a
# benchmark starts compiled ~0.1 s of source first, part of what a dock was timed for. Children inherit.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

MB = 1_000_000
REPO = Path(__file__).resolve().parent.parent
# glibc malloc for the processes of bench/upload.py's raw-TLS reference, so that it runs with what the
# reference platform sets for itself (simulators/platform/cli.py, LARGE_MESSAGE_MALLOC): without raised
# trim and mmap thresholds every received 1 MiB message is returned to the kernel and faulted in again.
GRPC_MALLOC_TUNABLES = "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432"


def child_env(**extra: str) -> dict[str, str]:
    """The environment for an ``egw`` a benchmark starts: this checkout first on the path, and nothing
    else changed, so the gateway runs with the settings it ships with."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


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
    """``openssl dgst -sha256`` over the same files: the hashing limit of this machine.

    Every file is read once first, so openssl hashes from the page cache: the reference is the hash
    alone, the strictest one. (Files our side wrote or read with O_DIRECT are not cached; timing
    openssl on them cold would add the disk and, on a virtual machine, the cost of fresh page-cache
    pages, about 2 CPU s/GB here, and flatter the ratio.)"""
    total = sum(p.stat().st_size for p in paths)
    subprocess.run(["cat", *map(str, paths)], check=True, stdout=subprocess.DEVNULL)  # into the page cache
    subprocess.run(["openssl", "dgst", "-sha256", str(paths[0])], check=True, capture_output=True)  # warm up
    started = time.perf_counter()
    subprocess.run(["openssl", "dgst", "-sha256", *map(str, paths)], check=True, capture_output=True)
    return total / (time.perf_counter() - started) / MB


def peak_rss_mb_self() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_kib(pid: int) -> int | None:
    """A live process's own peak resident set (VmHWM) in KiB; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if "VmHWM:" not in status:  # a zombie has no memory map any more
        return None
    return int(status.split("VmHWM:")[1].split()[0])


class PeakRss:
    """Peak RSS of one child, sampled from /proc while it runs.

    Why not ``wait4``'s ``ru_maxrss``: Linux folds the parent's peak into the child's at
    ``exec``, so a child started by a large process (a long pytest run at 365 MB) reports at
    least the parent's size. VmHWM belongs to the child's own memory map.
    """

    def __init__(self, pid: int, period_s: float = 0.02) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_s,), daemon=True, name=f"peak-rss-{pid}")
        self._thread.start()

    def sample(self) -> int:
        value = vm_hwm_kib(self.pid)
        if value is not None:
            self.peak_kib = max(self.peak_kib, value)
        return self.peak_kib

    def _run(self, period_s: float) -> None:
        while not self._stop.is_set() and vm_hwm_kib(self.pid) is not None:
            self.sample()
            self._stop.wait(period_s)

    def stop(self) -> int:
        """Stop sampling; the peak in KiB (sample once more first when the process is still alive)."""
        self.sample()
        self._stop.set()
        self._thread.join(5)
        return self.peak_kib


def write_bodycam_station_config(path: Path, data: Path, usbip_url: str, volumes: Path) -> Path:
    """A gateway.toml for ``egw run`` docking recorders from one USB/IP server, the screen on a free
    port and no metrics: the station the dock tests and benchmarks run."""
    path.write_text(f"""
data_dir = "{data}"
[screen]
listen = "127.0.0.1:0"
[metrics]
listen = ""
[[devices]]
kind = "bodycam"
name = "dock"
usbip = "{usbip_url.removeprefix('usbip://')}"
volumes = "{volumes}/{{serial}}"
""")
    return path


def fill_disk(path: Path) -> int:
    """Write zeros to ``path`` until its file system is full (a real ENOSPC, not an injected one);
    the bytes written. Used by the campaign's disk fault and the full-disk tests.

    Unbuffered on purpose: a buffered file keeps the tail of the write that hit ENOSPC and raises it
    again from ``close()``, whenever the free space is not a multiple of the block written."""
    written = 0
    zeros = bytes(65536)
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                n = fh.write(zeros)
                if not n:
                    break
                written += n
        except OSError:  # ENOSPC: the disk is full, which is the point
            pass
    return written


def load_average() -> str:
    """The 1/5/15-minute load average, quoted next to every figure: this machine is shared."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _child_cpu(command: list[str], **kwargs: object) -> float:
    """CPU seconds (user + system) one command took, measured by the kernel, not the wall clock."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)  # type: ignore[call-overload]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _aes_gcm_cpu_s_per_gb() -> float:
    """AES-256-GCM (TLS 1.3's bulk cipher here) at 16 KiB records, from ``openssl speed``."""
    out = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds", "1"],
                         check=True, capture_output=True, text=True).stdout
    row = [line for line in out.splitlines() if line.startswith("AES-256-GCM") or line.startswith("aes-256-gcm")][-1]
    kbytes_per_s = float(row.split()[-1].rstrip("k"))  # "aes-256-gcm  …  1234567.89k": thousands of bytes/s
    return 1e9 / (kbytes_per_s * 1000)


def unavoidable_cpu_s_per_gb(files: list[Path], scratch: Path) -> dict[str, float]:
    """CPU-s per GB of each operation a dock cannot avoid, timed with standard tools on the same files.

    Per byte docked: the gateway reads it from the recorder, hashes it (SHA-256), writes it to its
    store and syncs, encrypts it for TLS and sends it; the platform receives, decrypts, hashes, writes
    and syncs; the gateway reads and hashes the device copy once more before deleting it. Each is
    timed here (cat, openssl dgst, dd oflag=direct conv=fsync, openssl speed, a loopback socket),
    so ``limit`` is what two cores could do if the software added nothing.
    """
    total = sum(p.stat().st_size for p in files)
    gb = total / 1e9
    read = _child_cpu(["cat", *map(str, files)]) / gb
    sha = _child_cpu(["openssl", "dgst", "-sha256", *map(str, files)]) / gb
    write = sum(_child_cpu(["dd", f"if={p}", f"of={scratch / 'limit.bin'}", "bs=1M", "oflag=direct", "conv=fsync"])
                for p in files) / gb
    (scratch / "limit.bin").unlink(missing_ok=True)
    startup = _child_cpu([sys.executable, "-c", "pass"])
    loopback = max(0.0, _child_cpu([sys.executable, "-c", _LOOPBACK, *map(str, files)]) - startup) / gb
    aes = _aes_gcm_cpu_s_per_gb()
    per_side = {"read": read, "sha256": sha, "write+fsync": write, "aes-gcm": aes, "loopback": loopback}
    gateway = read + sha + write + aes + loopback / 2 + read + sha  # … + the re-hash of the device copy
    platform = loopback / 2 + aes + sha + write
    return {**per_side, "gateway": gateway, "platform": platform, "total": gateway + platform}


# A sender and a receiver of every file over a loopback TCP socket (sendfile / recv_into): the kernel's
# share of moving the bytes between two processes.
_LOOPBACK = """
import os, socket, sys, threading
server = socket.create_server(("127.0.0.1", 0))
def drain():
    conn, _ = server.accept()
    buf = memoryview(bytearray(1 << 20))
    while conn.recv_into(buf):
        pass
t = threading.Thread(target=drain); t.start()
with socket.create_connection(server.getsockname()) as out:
    for path in sys.argv[1:]:
        with open(path, "rb") as fh:
            out.sendfile(fh)
t.join()
"""
