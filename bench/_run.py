"""bench/run: run every benchmark that exists and print one table of ratios and peak memory.

    bench/run [--only ingest,upload,mqtt,dock,rapidtest] [--quick] [--json] [--python PY]

Each benchmark runs as its own subprocess (so one's page cache, threads and
memory do not leak into the next one's figures) and measures its own
reference in the same run; this script only collects each one's last line
``name = R`` and its peak-RSS line, and puts them next to the machine they
were measured on (CPU count and model, load average before and after each
run: the machine may be shared, and a ratio means most when the load is low).

``--quick`` uses smaller sizes (a smoke run, minutes → seconds): the ratios
are then less meaningful than the full sizes' and are marked as quick.
A benchmark that fails is shown as FAILED with its exit code, and makes the
exit status 1; performance is reported here, never asserted in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


@dataclass(frozen=True)
class Spec:
    """How to run one benchmark and how to read its output."""

    name: str
    script: str
    reference: str  # what its ratio is measured against
    reference_line: str  # regex whose first group is the reference's figure (MB/s or msg/s)
    ours_line: str  # regex whose first group is our own figure
    target: float | None  # the ratio the issue asks for (None: not set)
    rss_limit_mb: float | None
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ()


SPECS = [
    Spec("ingest", "ingest.py", "openssl dgst -sha256, same files", r"openssl dgst -sha256: ([\d.]+) MB/s",
         r"egw ingest[^:]*: ([\d.]+) MB/s", 0.8, 150,
         (), ("--gib", "0.5", "--files", "4")),
    Spec("upload", "upload.py", "raw TLS socket (Python ssl, same certs)", r"raw TLS socket[^:]*: ([\d.]+) MB/s",
         r"gRPC upload[^:]*: ([\d.]+) MB/s", 0.8, 200,
         (), ("--size-mib", "256", "--repeat", "1")),
    Spec("mqtt", "mqtt.py", "bare paho QoS 1 loop, same broker", r"(?:reference|bare paho)[^:]*: ([\d.]+)",
         r"(?:egw|ours|gateway|outbox)[^:]*: ([\d.]+)", 0.7, None, (), ("--n", "5000")),
    Spec("dock", "dock.py", "openssl dgst -sha256, same bytes", r"openssl dgst -sha256: ([\d.]+) MB/s",
         r"start → last receipt: ([\d.]+) MB/s", 0.4, 250,
         (), ("--count", "2", "--fill-mb", "256")),
    Spec("rapidtest", "rapidtest.py", "p50 ms, last frame → verified at the platform (lower is better; target < 50)",
         r"bare paho QoS 1 publish[^:]*: p50 ([\d.]+)", r"results: \d+ in [\d.]+ s = ([\d.]+) results/s", None, None,
         (), ("--tests", "50")),
    # The many-small-items cases (#18): throughput is not only measured on large files.
    Spec("dock-small-files", "dock_files.py", "10,000 tiny recordings docked, killed a third of the way, re-docked",
         r"egw run until killed\s+([\d.]+) s", r"small_files_per_s = ([\d.]+)", None, 250,
         (), ("--files", "1000")),
    Spec("rapidtest-burst", "rapidtest.py", "1,000 results at once; p50 ms, last frame → verified at the platform",
         r"bare paho QoS 1 publish[^:]*: p50 ([\d.]+)", r"results: \d+ in [\d.]+ s = ([\d.]+) results/s", None, None,
         ("--tests", "1000"), ("--tests", "200")),
]

# "name = R", optionally followed by context the benchmark prints beside it (the load average)
RATIO = re.compile(r"^\s*([\w./-]+)\s*=\s*([-\d.]+|nan|inf)(?:\s+.*)?$")
RSS = re.compile(r"peak RSS[^:]*:\s*([\d.]+)\s*MB", re.IGNORECASE)
RSS_LIMIT = re.compile(r"(?:limit|target\s*<?=?)\s*([\d.]+)\s*MB", re.IGNORECASE)


@dataclass
class Result:
    name: str
    status: str  # "ok" | "FAILED (exit N)" | "no ratio line"
    ratio_name: str | None = None
    ratio: float | None = None
    target: float | None = None
    reference: str = ""
    reference_figure: str | None = None
    ours_figure: str | None = None
    peak_rss_mb: float | None = None
    rss_limit_mb: float | None = None
    seconds: float = 0.0
    load_before: str = ""
    load_after: str = ""
    quick: bool = False
    tail: list[str] = field(default_factory=list)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
        if found:
            have = set(found.group(1).split())
            flags = ",".join(f for f in ("sha_ni", "aes", "avx2", "avx512f") if f in have)
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "cpu_flags": flags, "load_average": load_average(),
            "python": sys.version.split()[0], "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def run_one(spec: Spec, python: str, quick: bool, extra: list[str], timeout: float) -> Result:
    args = list(spec.quick if quick else spec.full) + extra
    result = Result(spec.name, "ok", target=spec.target, reference=spec.reference, rss_limit_mb=spec.rss_limit_mb,
                    quick=quick, load_before=load_average())
    started = time.monotonic()
    try:
        proc = subprocess.run([python, str(BENCH / spec.script), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        result.status = f"FAILED (timeout {timeout:.0f} s)"
        result.seconds = time.monotonic() - started
        result.load_after = load_average()
        return result
    result.seconds = time.monotonic() - started
    result.load_after = load_average()
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result.tail = lines[-12:] + [f"stderr: {line}" for line in proc.stderr.splitlines()[-5:] if proc.returncode]
    if proc.returncode != 0:
        result.status = f"FAILED (exit {proc.returncode})"
        return result
    found = RATIO.match(lines[-1]) if lines else None
    if not found:
        result.status = "no `name = R` last line"
        return result
    result.ratio_name, result.ratio = found.group(1), float(found.group(2))
    for line in lines:
        rss = RSS.search(line)
        if rss:
            result.peak_rss_mb = float(rss.group(1))
            limit = RSS_LIMIT.search(line)
            if limit and result.rss_limit_mb is None:
                result.rss_limit_mb = float(limit.group(1))
        ref = re.search(spec.reference_line, line)
        if ref and result.reference_figure is None:
            result.reference_figure = ref.group(1)
        ours = re.search(spec.ours_line, line)
        if ours and result.ours_figure is None:
            result.ours_figure = ours.group(1)
    return result


def table(results: list[Result], info: dict[str, str], detail: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 170)
    t = Table(title=f"egw benchmarks · {info['nproc']} × {info['cpu']} ({info['cpu_flags'] or 'no flags read'}) · "
                    f"Python {info['python']} · {info['when']}")
    for column in ("benchmark", "ratio", "target", "met", "ours", "reference (same run)", "ref", "peak RSS MB",
                   "RSS limit", "s", "1-min load before → after"):
        t.add_column(column, justify="right" if column in ("ratio", "target", "ours", "ref", "peak RSS MB", "RSS limit", "s")
                     else "left")
    for r in results:
        if r.status != "ok":
            t.add_row(r.name, f"[red]{r.status}[/]", "", "", "", r.reference, "", "", "", f"{r.seconds:.0f}",
                      f"{r.load_before.split()[0]} → {r.load_after.split()[0]}")
            continue
        met = "—" if r.target is None or r.ratio is None else ("[green]yes[/]" if r.ratio >= r.target else "[red]no[/]")
        rss_ok = r.peak_rss_mb is not None and r.rss_limit_mb is not None and r.peak_rss_mb > r.rss_limit_mb
        t.add_row(f"{r.ratio_name}" + (" (quick)" if r.quick else ""), f"{r.ratio:.2f}",
                  "—" if r.target is None else f"≥ {r.target}", met, r.ours_figure or "—", r.reference, r.reference_figure or "—",
                  "—" if r.peak_rss_mb is None else (f"[red]{r.peak_rss_mb:.0f}[/]" if rss_ok else f"{r.peak_rss_mb:.0f}"),
                  "—" if r.rss_limit_mb is None else f"≤ {r.rss_limit_mb:.0f}", f"{r.seconds:.0f}",
                  f"{r.load_before.split()[0]} → {r.load_after.split()[0]}")
    console.print(t)
    console.print("ours / ref: MB/s (msg/s for mqtt), each pair measured in the same run")
    console.print(f"machine: nproc {info['nproc']}, {info['cpu']}; load average (1/5/15 min) at the start: "
                  f"{info['load_average']}, at the end: {load_average()}")
    for r in results:
        if r.status != "ok":
            console.print(f"[red]{r.name}: {r.status}[/]")
        elif detail:
            console.print(f"{r.name}:")
        if r.status != "ok" or detail:
            for line in r.tail:
                console.print(f"    {line}", markup=False)


def main() -> int:
    names = [s.name for s in SPECS]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(names)}")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run, not a figure to quote")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("--detail", action="store_true",
                        help="also print each benchmark's last lines (e.g. the dock's CPU s/GB and dock/limit)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the benchmarks")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=ARG",
                        help="extra argument for one benchmark, e.g. --arg dock=--fill-mb=512 (repeatable)")
    args = parser.parse_args()
    chosen = names if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(names)}")
    extra: dict[str, list[str]] = {}
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep or name not in names:
            parser.error(f"--arg wants NAME=ARG with NAME one of {', '.join(names)}, got {item!r}")
        extra.setdefault(name, []).extend(value.split("=", 1) if value.startswith("--") and "=" in value else [value])
    info = machine()
    results = []
    for spec in SPECS:
        if spec.name not in chosen:
            continue
        if not (BENCH / spec.script).exists():
            if args.only:
                print(f"bench/{spec.script} does not exist (yet): {spec.name} skipped", file=sys.stderr)
            continue
        if not args.json:
            print(f"running {spec.name} (load {load_average()})…", file=sys.stderr, flush=True)
        results.append(run_one(spec, args.python, args.quick, extra.get(spec.name, []), args.timeout))
    if args.json:
        print(json.dumps({"machine": info, "load_average_end": load_average(), "results": [asdict(r) for r in results]},
                         indent=2, ensure_ascii=False))
    else:
        table(results, info, args.detail)
    return 0 if results and all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
