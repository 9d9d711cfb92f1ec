"""A recorder with thousands of files, docked, interrupted and re-docked: each file once, bounded memory.

    python bench/dock_files.py [--files 10000] [--workdir DIR]

The reference platform and one simulated body-worn camera holding ``--files``
tiny (52-byte) recordings plus two real ones (``egw simulate bodycam
--tiny-recordings``). ``egw run`` docks it with the station screen on; its
card is polled while it copies (progress), and once a third of the files are
evidence ``egw run`` is SIGKILLed. The officer re-plugs the recorder and
``egw dock --json`` docks it again: it must copy only what the killed run had
not made evidence, deliver everything, and release every file only after its
receipt. Peak RSS of both gateway processes is their own VmHWM, sampled while they run.

``tests/test_dock_hostile.py`` runs the same scenario with 1 000 files and
asserts the outcome; this script reports the numbers for 10 000 (or any
``--files``) and exits 1 if an invariant fails. Timings are reported, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import PeakRss, child_env, load_average, write_bodycam_station_config  # noqa: E402
from bench.dock import egw, read_lines, spawn, stop  # noqa: E402

RSS_LIMIT_MB = 250


@dataclass
class Outcome:
    files: int  # recordings on the recorder (tiny ones plus the two real ones)
    progress: list[tuple[int, int, int, int]] = field(default_factory=list)  # card: files done/total, bytes done/total
    evidence_at_kill: int = 0
    released_at_kill: int = 0  # released by egw run (each after its receipt) before the kill: gone from the recorder
    on_recorder_at_kill: int = -1  # files on the recorder after the kill (a deletion the kill interrupted is gone too)
    released_entries: dict[str, int] = field(default_factory=dict)  # evidence id -> its released-from-device entries
    interrupted: int = 0  # of those, deletions the kill interrupted, recorded at the re-dock
    rss_run_mb: float = 0.0  # egw run, SIGKILLed a third of the way
    rss_dock_mb: float = 0.0  # egw dock, the re-dock to the end
    dock_exit: int | None = None
    report: dict | None = None
    status_total: int = 0
    delivered: int = 0
    left_on_recorder: int = -1
    custody_ok: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        return self.report["recorders"][0]["recordings"] if self.report and self.report["recorders"] else []

    @property
    def copied_again(self) -> int:
        """Recordings the re-dock copied (the rest it confirmed by digest as already evidence)."""
        return sum(1 for r in self.rows if r["copied"])

    def problems(self) -> list[str]:
        """Every broken invariant, in words (empty when the run was right)."""
        out = []
        rows = self.rows
        if self.dock_exit != 0 or not (self.report and self.report["safe"]):
            out.append(f"egw dock exited {self.dock_exit}, safe={self.report and self.report['safe']}")
        on_recorder = self.on_recorder_at_kill
        if len(rows) != on_recorder or len({r["sha256"] for r in rows}) != on_recorder:
            out.append(f"re-dock listed {len(rows)} recordings with {len({r['sha256'] for r in rows})} digests, "
                       f"expected the {on_recorder} on the recorder ({self.released_at_kill} released before the kill)")
        if self.released_at_kill + self.interrupted != self.files - on_recorder:
            out.append(f"{self.files - on_recorder} files were gone from the recorder after the kill, but custody had "
                       f"{self.released_at_kill} released and the re-dock found {self.interrupted} interrupted")
        if len(self.released_entries) != self.files or set(self.released_entries.values()) != {1}:
            out.append(f"custody has released-from-device for {len(self.released_entries)} of {self.files} recordings "
                       f"({sum(n > 1 for n in self.released_entries.values())} of them more than once)")
        if self.copied_again != self.files - self.evidence_at_kill:
            out.append(f"re-dock copied {self.copied_again}, expected {self.files - self.evidence_at_kill} "
                       f"({self.evidence_at_kill} were evidence before the kill)")
        if not all(r["released"] and r["state"] == "released" for r in rows):
            out.append(f"{sum(not r['released'] for r in rows)} recordings not released")
        if self.status_total != self.files or self.delivered != self.files:
            out.append(f"store holds {self.status_total}, platform {self.delivered}, expected {self.files} each")
        if self.left_on_recorder != 0:
            out.append(f"{self.left_on_recorder} files left on the recorder")
        if not self.custody_ok:
            out.append("custody log does not verify")
        out += _progress_problems(self.progress, self.files)
        for name, rss in (("egw run", self.rss_run_mb), ("egw dock", self.rss_dock_mb)):
            if not 0 < rss < RSS_LIMIT_MB:
                out.append(f"{name} peak RSS {rss:.0f} MB (limit {RSS_LIMIT_MB} MB)")
        return out


def _progress_problems(samples: list[tuple[int, int, int, int]], files: int) -> list[str]:
    if not samples:
        return ["the station card never showed the recorder's files"]
    out = []
    if any(total != files for _, total, _, _ in samples):
        out.append(f"card showed totals {sorted({s[1] for s in samples})}, expected {files}")
    if any(b[0] < a[0] or b[2] < a[2] for a, b in zip(samples, samples[1:])):
        out.append("card progress went backwards")
    if any(done > bytes_total for _, _, done, bytes_total in samples):
        out.append("card showed more bytes copied than the recorder holds")
    if not any(0 < done < total for done, total, _, _ in samples):
        out.append("card never showed a copy in progress")
    return out


def run(workdir: Path, files: int, log=print) -> Outcome:
    """The whole scenario in ``workdir`` (made empty first)."""
    for sub in ("platform", "gw", "volumes"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    platform_data, data, volumes = workdir / "platform", workdir / "gw", workdir / "volumes"
    outcome = Outcome(files=files + 2)
    procs: list[subprocess.Popen] = []
    try:
        platform = spawn("simulate", "platform", "--data", str(platform_data), "--listen", "127.0.0.1:0")
        procs.append(platform)
        address = read_lines(platform, 2, 60, "the platform")[0].strip()
        egw("keys", "init", "--data-dir", str(data), "--gateway-id", "gw-bench-files")
        token = json.loads(egw("platform", "token", "--data", str(platform_data), "--gateway-id", "gw-bench-files", "--json").stdout)["token"]
        egw("enroll", "--platform", address, "--token", token, "--data-dir", str(data))
        started = time.monotonic()
        recorders = spawn("simulate", "bodycam", "--count", "1", "--recordings", "2", "--tiny-recordings", str(files),
                          "--small", "--minutes", "0.05", "--volumes", str(volumes), "--listen", "127.0.0.1:0",
                          stdin=subprocess.PIPE)
        procs.append(recorders)
        url = read_lines(recorders, 1, 300, "the recorder")[0].strip()
        outcome.seconds["recorder made"] = time.monotonic() - started

        started = time.monotonic()
        gateway = _spawn_run(workdir, data, url, volumes)
        procs.append(gateway)
        gateway_rss = PeakRss(gateway.pid)
        screen = json.loads(read_lines(gateway, 1, 60, "egw run")[0])["screen"]
        outcome.progress = _watch_until(screen, lambda done, total: total and done * 3 >= total, 300)
        outcome.rss_run_mb = gateway_rss.stop() / 1024
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.wait()
        outcome.seconds["egw run until killed"] = time.monotonic() - started
        outcome.evidence_at_kill = _count_evidence(data)
        outcome.released_at_kill = _count_evidence(data, "released")
        outcome.on_recorder_at_kill = sum(len(names) for _, _, names in os.walk(volumes / "1000001"))
        log(f"egw run SIGKILLed with {outcome.evidence_at_kill} of {outcome.files} recordings as evidence")

        started = time.monotonic()
        recorders.stdin.write("replug 1-1\n")  # the officer pulls the recorder out and docks it again
        recorders.stdin.flush()
        _wait_line(recorders, "ok replug 1-1", 120)
        outcome.seconds["replug"] = time.monotonic() - started

        started = time.monotonic()
        dock = subprocess.Popen([sys.executable, "-m", "gateway", "dock", "--usbip", url, "--volumes",
                                 str(volumes / "{serial}"), "--data-dir", str(data), "--json"],
                                env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(dock)
        dock_rss = PeakRss(dock.pid)
        out, err = _communicate(dock, 3600)
        outcome.rss_dock_mb = dock_rss.stop() / 1024
        dock.wait()
        outcome.dock_exit = dock.returncode
        outcome.seconds["egw dock (re-dock)"] = time.monotonic() - started
        outcome.report = json.loads(out) if out.strip() else None
        if outcome.report is None:
            log(err.decode(errors="replace")[-3000:])
        status = json.loads(egw("status", "--data-dir", str(data), "--json").stdout)
        outcome.status_total = status["total"]
        outcome.delivered = len(json.loads(egw("platform", "ls", "--data", str(platform_data), "--json").stdout))
        outcome.left_on_recorder = sum(len(names) for _, _, names in os.walk(volumes / "1000001"))
        verify = subprocess.run([sys.executable, "-m", "gateway", "custody", "verify", "--data-dir", str(data)],
                                env=child_env(), capture_output=True)
        outcome.custody_ok = verify.returncode == 0
        for entry in _custody_entries(data, "released-from-device"):
            outcome.released_entries[entry["evidence_id"]] = outcome.released_entries.get(entry["evidence_id"], 0) + 1
            outcome.interrupted += bool(entry.get("interrupted"))
        return outcome
    finally:
        for proc in reversed(procs):
            stop(proc)



def _spawn_run(workdir: Path, data: Path, url: str, volumes: Path) -> subprocess.Popen:
    config = workdir / "gateway.toml"
    write_bodycam_station_config(config, data, url, volumes)
    return spawn("run", "-c", str(config))


def _watch_until(screen: str, stop_when, timeout: float) -> list[tuple[int, int, int, int]]:
    """Poll the station's bodycam card; every distinct (files done, files, bytes done, bytes) seen."""
    samples: list[tuple[int, int, int, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(screen + "api/state", timeout=5) as response:
            cards = [d for d in json.loads(response.read())["devices"] if d["kind"] == "bodycam" and d["files_total"]]
        if cards:
            card = cards[0]
            sample = (card["files_ingested"], card["files_total"], card["bytes_ingested"], card["bytes_total"])
            if not samples or samples[-1] != sample:
                samples.append(sample)
            if stop_when(sample[0], sample[1]):
                return samples
        time.sleep(0.05)
    raise TimeoutError(f"egw run did not get a third of the way within {timeout:.0f} s (last card: {samples[-1:]})")


def _custody_entries(data: Path, event: str) -> list[dict]:
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
    try:
        return [json.loads(entry) for (entry,) in db.execute("SELECT entry FROM custody WHERE event = ?", (event,))]
    finally:
        db.close()


def _count_evidence(data: Path, state: str | None = None) -> int:
    db = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True)
    try:
        if state is not None:
            return int(db.execute("SELECT COUNT(*) FROM evidence WHERE state = ?", (state,)).fetchone()[0])
        return int(db.execute("SELECT COUNT(*) FROM evidence").fetchone()[0])
    finally:
        db.close()


def _wait_line(proc: subprocess.Popen, line: str, timeout: float) -> None:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffered = b""
    deadline = time.monotonic() + timeout
    while line.encode() not in buffered:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"no {line!r} within {timeout:.0f} s")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"the recorder exited before {line!r}")
        buffered += chunk


def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[bytes, bytes]:
    """Read both pipes to EOF (the caller reaps the process)."""
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout)
    if any(reader.is_alive() for reader in readers):
        proc.kill()
        raise TimeoutError(f"{proc.args} did not finish within {timeout:.0f} s")
    return out[0], err[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="tiny recordings on the recorder (plus two real ones)")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="egw-bench-files-"))
    try:
        outcome = run(workdir, args.files)
    finally:
        if args.workdir is None:  # a temporary work dir goes (211 MB a run at 10,000 files); --workdir keeps it
            shutil.rmtree(workdir, ignore_errors=True)
    for step, seconds in outcome.seconds.items():
        print(f"{step:24s} {seconds:7.1f} s")
    print(f"progress samples          {len(outcome.progress)} (last before the kill: {outcome.progress[-1:]})")
    print(f"evidence at the kill      {outcome.evidence_at_kill} of {outcome.files}")
    print(f"re-dock copied            {outcome.copied_again} (confirmed by digest: {outcome.files - outcome.copied_again})")
    print(f"store / platform / left   {outcome.status_total} / {outcome.delivered} / {outcome.left_on_recorder}")
    print(f"released                  {len(outcome.released_entries)} in custody, {outcome.released_at_kill} before "
          f"the kill, {outcome.interrupted} interrupted by it and recorded at the re-dock")
    print(f"peak RSS                  egw run {outcome.rss_run_mb:.0f} MB, egw dock {outcome.rss_dock_mb:.0f} MB")
    problems = outcome.problems()
    for problem in problems:
        print(f"FAIL {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    docking = outcome.seconds.get("egw run until killed", 0.0) + outcome.seconds.get("egw dock (re-dock)", 0.0)
    print(f"small_files_per_s = {outcome.files / docking if docking else float('nan'):.0f}   "
          f"(stored, receipted and released, over both docks; load average {load_average()})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
