"""Dock throughput: 4 recorders docked at once, ingested and delivered, against the SHA-256 limit.

    python bench/dock.py [--count 4] [--fill-mb 1024] [--parallel P] [--repeat N] [--workdir DIR]
                         [--release receipt|ingest|never]

Starts the reference platform and ``--count`` simulated body-worn cameras
(USB/IP control, one ``--fill-mb`` bulk file each plus a small video), enrols
a gateway, then times ``egw dock`` as a child process: from its start to the
platform's last receipt (end to end) and to its exit (which also includes
the re-hash of every device copy before it is released). The reference is
``openssl dgst -sha256`` over the same bytes in the same run (the blobs the
gateway stored). The gateway's peak RSS is the dock process's own VmHWM,
sampled while it runs. Also measured in the same run: the CPU cost of every
operation a dock cannot avoid (read, SHA-256, write + fsync, AES-GCM, loopback),
timed with standard tools on the same blobs, and from it the physical limit of
this machine (``dock/limit``, target ≥ 0.75); and the time from the last receipt
to "safe to undock". Last line: ``dock/openssl = R`` (target ≥ 0.4, RSS ≤ 250 MB)
with the load average.

The physical limit also bounds ``dock/openssl``: a dock that added nothing to
the unavoidable work would score limit ÷ openssl, printed as "the most this
machine allows". ``--repeat N`` docks N times from scratch and ends with the
median of each ratio (one dock moves by about ±0.1 with the host's load).

Why the platform is in the same run: on this machine the gateway and the
platform share two cores, and each hashes and writes every byte, so the
ratio says how well ingest and upload overlap, not how fast one of them is.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    MB,
    PeakRss,
    child_env,
    load_average,
    openssl_sha256_mbps,
    unavoidable_cpu_s_per_gb,
)

LIMIT_RSS_MB = 250
TARGET = 0.4



def egw(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=child_env(), text=True, capture_output=True,
                          check=True, **kwargs)  # type: ignore[call-overload]


def spawn(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], env=child_env(), text=True, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float, what: str) -> list[str]:
    """The first ``count`` stdout lines, raw reads so select() sees everything."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffered = b""
    deadline = time.monotonic() + timeout
    while buffered.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise SystemExit(f"{what} did not start within {timeout:.0f} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SystemExit(f"{what} exited with {proc.wait()} before it was ready")
        buffered += chunk
    return buffered.decode().splitlines()[:count]


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def last_receipt_time(platform_data: Path) -> tuple[float, int]:
    from simulators.platform.index import Index

    index = Index(platform_data)
    try:
        receipts = index.receipts()
    finally:
        index.close()
    return max((r.received_at for r in receipts), default=0.0), len(receipts)


@dataclass
class DockRun:
    """The figures of one dock, all measured in the same run."""

    recordings: int
    receipts: int
    total: int  # bytes docked
    load_before: str
    load_after: str
    reference: float  # openssl dgst -sha256, MB/s
    to_receipt_s: float  # start → the platform's last receipt
    to_exit_s: float  # start → the dock's exit (incl. the re-hash before release)
    cpu_s: dict[str, float]  # gateway, platform, recorder simulator
    limits: dict[str, float]  # unavoidable CPU-s per GB (bench._common.unavoidable_cpu_s_per_gb)
    peak_rss_mb: float

    @property
    def e2e(self) -> float:
        return self.total / self.to_receipt_s / MB

    @property
    def limit_mbps(self) -> float:
        return (os.cpu_count() or 1) / self.limits["total"] * 1000

    @property
    def dock_limit(self) -> float:
        return self.e2e / self.limit_mbps

    @property
    def dock_openssl(self) -> float:
        return self.e2e / self.reference

    @property
    def ceiling(self) -> float:
        """The highest dock/openssl this machine allows: a dock at its physical limit."""
        return self.limit_mbps / self.reference

    def cpu_s_per_gb(self, who: str) -> float:
        return self.cpu_s[who] / self.total * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=4, help="recorders docked at once")
    parser.add_argument("--fill-mb", type=float, default=1024, help="bulk file per recorder, MB")
    parser.add_argument("--release", choices=["receipt", "ingest", "never"], default="receipt")
    parser.add_argument("--parallel", type=int, help="egw dock --parallel: recordings copied at once (default: egw's)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="docks in a row, each from scratch; with more than one, the last lines are the medians")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="egw-bench-dock-"))
    runs: list[DockRun] = []
    for number in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"--- dock {number} of {args.repeat}")
        runs.append(dock_once(args, workdir))
        print_run(runs[-1], args)
    if args.repeat > 1:
        print_medians(runs)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = statistics.median(r.dock_openssl for r in runs)  # of one run: that run's
    print(f"dock/openssl = {ratio:.2f}   load average {load_average()}")
    return 0


def dock_once(args: argparse.Namespace, workdir: Path) -> DockRun:
    """Start a platform, recorders and an enrolled gateway from scratch, time one ``egw dock``."""
    for sub in ("platform", "gw", "volumes"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    platform_data, data, volumes = workdir / "platform", workdir / "gw", workdir / "volumes"
    platform = spawn("simulate", "platform", "--data", str(platform_data), "--listen", "127.0.0.1:0")
    recorders: subprocess.Popen[str] | None = None
    try:
        address = read_lines(platform, 2, 60, "the platform")[0].strip()
        egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-bench-dock")
        token = json.loads(egw("platform", "token", "--data", str(platform_data), "--gateway-id", "gw-bench-dock", "--json").stdout)["token"]
        egw("enroll", "--platform", address, "--token", token, "--data-dir", str(data))
        recorders = spawn("simulate", "bodycam", "--count", str(args.count), "--fill-mb", str(args.fill_mb),
                          "--recordings", "1", "--small", "--volumes", str(volumes), "--listen", "127.0.0.1:0",
                          stdin=subprocess.PIPE)
        url = read_lines(recorders, 1, 600, "the recorders")[0].strip()

        load_before = load_average()
        children_before = _children_cpu_s()
        platform_cpu_before = _proc_cpu_s(platform.pid)
        recorders_cpu_before = _proc_cpu_s(recorders.pid)
        started = time.time()
        dock = subprocess.Popen([sys.executable, "-m", "gateway", "dock", "--usbip", url, "--volumes",
                                 str(volumes / "{serial}"), "--data-dir", str(data), "--json", "--release", args.release,
                                 *(["--parallel", str(args.parallel)] if args.parallel else [])],
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        peak_rss = PeakRss(dock.pid)
        out, err = dock.communicate(timeout=3600)
        exited = time.time()
        peak_rss_mb = peak_rss.stop() / 1024
        cpu_s = {"gateway": _children_cpu_s() - children_before,  # only the dock was reaped in between
                 "platform": _proc_cpu_s(platform.pid) - platform_cpu_before,
                 "recorder simulator": _proc_cpu_s(recorders.pid) - recorders_cpu_before}
        load_after = load_average()
        report = json.loads(out) if out.strip() else None
        if dock.returncode != 0 or not report or not report["safe"]:
            sys.stderr.write(err.decode(errors="replace")[-4000:])
            (workdir / "dock-report.json").write_bytes(out)
            (workdir / "dock-stderr.txt").write_bytes(err)
            sys.stderr.write(f"report kept in {workdir / 'dock-report.json'}\n")
            for failure in (report or {}).get("failures", []):
                sys.stderr.write(f"dock failure: {failure}\n")
            raise SystemExit(f"egw dock failed (exit {dock.returncode}): not every recording is safe, no figure")
        last_receipt, receipts = last_receipt_time(platform_data)
        rows = [row for r in report["recorders"] for row in r["recordings"]]
        blobs = [p for p in (data / "blobs" / "sha256").glob("??/*") if p.stat().st_size >= 1 << 20]
        return DockRun(recordings=len(rows), receipts=receipts, total=sum(row["size"] for row in rows),
                       load_before=load_before, load_after=load_after,
                       reference=openssl_sha256_mbps(blobs),  # the same bytes (the small videos are a rounding error)
                       to_receipt_s=last_receipt - started, to_exit_s=exited - started, cpu_s=cpu_s,
                       limits=unavoidable_cpu_s_per_gb(blobs, workdir), peak_rss_mb=peak_rss_mb)
    finally:
        if recorders is not None:
            stop(recorders)
        stop(platform)


def print_run(run: DockRun, args: argparse.Namespace) -> None:
    limits = run.limits
    print(f"recorders: {args.count} × ({args.fill_mb:.0f} MB bulk + 1 small video) = {run.total / MB:.0f} MB in "
          f"{run.recordings} recordings, {run.receipts} receipts, release={args.release}")
    print(f"load average (1/5/15 min) before: {run.load_before}, after: {run.load_after}")
    print(f"openssl dgst -sha256: {run.reference:.0f} MB/s")
    print(f"egw dock, start → last receipt: {run.e2e:.0f} MB/s ({run.to_receipt_s:.1f} s)")
    print(f"egw dock, start → exit (incl. re-hash before release): {run.total / run.to_exit_s / MB:.0f} MB/s "
          f"({run.to_exit_s:.1f} s)")
    print("CPU seconds per GB: " + ", ".join(f"{who} {run.cpu_s_per_gb(who):.2f}" for who in run.cpu_s)
          + " (two cores shared with everything else running)")
    print("unavoidable CPU-s per GB, measured now with standard tools: " + ", ".join(
        f"{name} {limits[name]:.2f}" for name in ("read", "sha256", "write+fsync", "aes-gcm", "loopback")))
    print(f"  gateway {limits['gateway']:.2f} (incl. the re-hash before release), platform {limits['platform']:.2f}: "
          f"physical limit on {os.cpu_count() or 1} CPU(s) {run.limit_mbps:.0f} MB/s; dock/limit = {run.dock_limit:.2f}")
    print(f"  a dock at that limit would give dock/openssl = {run.ceiling:.2f}: the most this machine allows "
          f"(target {TARGET})")
    print(f"last receipt → safe to undock (dock exit): {run.to_exit_s - run.to_receipt_s:.1f} s")
    print(f"dock peak RSS: {run.peak_rss_mb:.0f} MB (limit {LIMIT_RSS_MB} MB)")


def print_medians(runs: list[DockRun]) -> None:
    """One steadier figure per ratio: on a shared two-core host a single dock moves by ±0.1 with the load."""
    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} (from {min(values):.2f} to {max(values):.2f})"

    print(f"--- medians of {len(runs)} docks")
    print(f"dock/limit: {spread([r.dock_limit for r in runs])}; target ≥ 0.75")
    print(f"gateway CPU s per GB: {spread([r.cpu_s_per_gb('gateway') for r in runs])}; "
          f"platform: {spread([r.cpu_s_per_gb('platform') for r in runs])}")
    print(f"unavoidable CPU s per GB, both sides: {spread([r.limits['total'] for r in runs])}")
    print(f"dock/openssl at the physical limit (the most this machine allows): {spread([r.ceiling for r in runs])}")
    print(f"dock/openssl: {spread([r.dock_openssl for r in runs])}; target ≥ {TARGET}")
    print(f"last receipt → safe to undock: {spread([r.to_exit_s - r.to_receipt_s for r in runs])} s")
    print(f"dock peak RSS, highest of {len(runs)}: {max(r.peak_rss_mb for r in runs):.0f} MB (limit {LIMIT_RSS_MB} MB)")


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a running process from /proc (0 where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
