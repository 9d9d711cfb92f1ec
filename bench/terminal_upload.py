"""Terminal upload throughput against ``egw ingest`` of the same file, and pairing-to-first-upload time.

    python bench/terminal_upload.py [--mb 200] [--runs 2] [--workdir DIR]

Starts a real ``egw run`` with the terminal API on loopback, pairs a simulated terminal (its QR URI
from ``egw terminal pair``), times pair + upload of a 1 MB photo, then uploads the big file with the
simulator's tus client (mutual TLS, 8 MiB PATCHes) and with tuspy (stock client, if installed), and
ingests the same file with ``egw ingest`` into a fresh data directory. Best of ``--runs`` each.
Last line: ``terminal/ingest = R`` (goal >= 0.7).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators.terminal.client import TerminalClient, parse_offer, tus_upload  # noqa: E402
from tests.conftest import run_egw  # noqa: E402
from tests.terminal_support import init_data, offer_code, station, write_config  # noqa: E402


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            fh.write(chunk)
            left -= len(chunk)


def ingest_seconds(work: Path, source: Path) -> float:
    data = work / f"ingest-{time.monotonic_ns()}"
    run_egw("keys", "init", "--data-dir", str(data), check=True)
    started = time.perf_counter()
    run_egw("ingest", str(source), "--data-dir", str(data), check=True, timeout=600)
    elapsed = time.perf_counter() - started
    shutil.rmtree(data)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="egw-terminal-bench-", dir=args.workdir))
    try:
        big = work / "big.mp4"
        make_file(big, args.mb << 20)
        photo = work / "photo.jpg"
        make_file(photo, 1 << 20)
        data = init_data(work, "gw-bench")
        results: dict[str, object] = {"mb": args.mb}
        with station(write_config(work, data)) as (_, ready):
            uri = offer_code(data, ready["terminal_pairing"])
            started = time.perf_counter()
            client = TerminalClient(work / "terminal")
            client.pair(parse_offer(uri), officer_id="900001")
            tus_upload(client, photo, media_type="image/jpeg")
            results["pair_to_first_upload_s"] = round(time.perf_counter() - started, 3)
            own, stock, ingest = [], [], []
            for run in range(args.runs):  # interleaved with the ingests: the machine's load hits both alike
                ingest.append(ingest_seconds(work, big))
                copy = work / f"big-{run}.mp4"  # a new name each run: a new item, not a duplicate
                shutil.copyfile(big, copy)
                t0 = time.perf_counter()
                tus_upload(client, copy, media_type="video/mp4")
                own.append(time.perf_counter() - t0)
                try:
                    from tusclient.client import TusClient
                except ImportError:
                    continue
                os.environ["REQUESTS_CA_BUNDLE"] = str(client.ca_path)
                copy2 = work / f"big-tuspy-{run}.mp4"
                shutil.copyfile(big, copy2)
                with open(copy2, "ab") as fh:
                    fh.write(b"!")  # different bytes: not the same blob
                t0 = time.perf_counter()
                TusClient(client.api_url + "files", client_cert=(str(client.cert_path), str(client.key_path))).uploader(
                    str(copy2), chunk_size=8 << 20, store_url=False).upload()
                stock.append(time.perf_counter() - t0)
        size_mb = args.mb * 1.048576
        results["terminal_mb_s"] = round(size_mb / min(own), 1)
        if stock:
            results["tuspy_mb_s"] = round(size_mb / min(stock), 1)
        results["ingest_mb_s"] = round(size_mb / min(ingest), 1)
        print(json.dumps(results))
        print(f"terminal/ingest = {min(ingest) / min(own):.2f}" + (f"  tuspy/ingest = {min(ingest) / min(stock):.2f}" if stock else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
