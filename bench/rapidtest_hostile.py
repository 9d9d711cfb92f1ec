"""A hostile rapid-test analyzer against ``egw run``: peak memory while it is refused again and again.

    python bench/rapidtest_hostile.py [--messages 5]

One ``egw run`` serves two simulated analyzers over TCP: a well-behaved one
and one whose every message after the first floods the gateway with frames that never
end (``endless``), then comes as a 5 MiB record (``giant``), then cleanly.
Each hostile attempt is refused at the 4 MiB limit and the link reset, so
the gateway receives about 4 MiB per refusal. Printed: refusals, bytes the
simulator pushed, the gateway's peak RSS (VmHWM) once the first clean message is stored
and at the end, and what each analyzer delivered. The RSS growth must not
follow the number of refusals.
"""

from __future__ import annotations

import argparse
import json
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import load_average  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def egw(log: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "gateway", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=log.open("w"))


def vm_hwm_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute(sql).fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5, help="hostile messages (each refused twice) (5)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="egw-bench-hostile-"))
    data = work / "data"
    subprocess.run([sys.executable, "-m", "gateway", "keys", "init", "--data-dir", str(data)], cwd=REPO, check=True,
                   capture_output=True)
    common = ("simulate", "rapidtest", "--tcp", "0", "--reply-timeout", "2", "--retry-delay", "0.5")
    good = egw(work / "good.log", *common, "--kind", "gold", "--interval", "0.5")
    hostile = egw(work / "hostile.log", *common, "--kind", "pesticide", "--tests", str(args.messages + 1), "--interval", "2",
                  "--fault", "endless,giant", "--fault-from", "2", "--fault-every", "1")  # message 1 goes out cleanly
    procs = [good, hostile]
    try:
        urls = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
        config = work / "gateway.toml"
        config.write_text(f'data_dir = "{data}"\n[screen]\nlisten = ""\n[metrics]\nlisten = ""\n'
                          f'[[devices]]\nkind = "rapidtest"\nname = "good"\nport = "{urls[0]}"\n'
                          f'[[devices]]\nkind = "rapidtest"\nname = "hostile"\nport = "{urls[1]}"\n')
        gateway = egw(work / "gateway.log", "run", "-c", str(config))
        procs.append(gateway)
        json.loads(gateway.stdout.readline())  # type: ignore[union-attr]
        started = time.monotonic()
        db = data / "state.db"
        refused = "SELECT COUNT(*) FROM custody WHERE event = 'device-message-refused'"
        first = "SELECT COUNT(*) FROM evidence WHERE kind = 'result' AND device_id = 'rapidtest-RT-PR-0001'"
        while count(db, first) == 0:  # the hostile analyzer's clean first message: its second comes 2 s later
            time.sleep(0.05)
        before = vm_hwm_mib(gateway.pid)
        assert count(db, refused) == 0, "the first refusal came before the baseline"
        hostile.wait(timeout=60 * args.messages)
        after = vm_hwm_mib(gateway.pid)
        elapsed = time.monotonic() - started
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        flooded = sum(int(line.rsplit("after ", 1)[1].split()[0]) for line in (work / "hostile.log").read_text().splitlines()
                      if "dropped the link after" in line)
        results = {device: n for device, n in sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(
            "SELECT device_id, COUNT(*) FROM evidence WHERE kind = 'result' GROUP BY device_id")}
        print(f"python bench/rapidtest_hostile.py --messages {args.messages}   (load {load_average()})")
        print(f"refusals (endless + giant)  {count(db, refused)}")
        print(f"endless flood pushed        {flooded / 2**20:.1f} MiB (the gateway reads 4 MiB of each, the rest dies with the link)")
        print(f"hostile results delivered   {results.get('rapidtest-RT-PR-0001', 0)} of {args.messages + 1}")
        print(f"good results meanwhile      {results.get('rapidtest-RT-AU-0001', 0)}")
        print(f"elapsed                     {elapsed:.1f} s")
        print(f"egw run peak RSS            {before:.1f} MiB before the first refusal, {after:.1f} MiB at the end "
              f"(+{after - before:.1f})")
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
