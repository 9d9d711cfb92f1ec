"""Ingest throughput against the machine's SHA-256 limit, measured in the same run.

    python bench/ingest.py [--gib 2] [--files 8] [--workdir DIR]

Makes the files (≥ 2 GiB by default), hashes them with ``openssl dgst
-sha256``, then ingests them through the evidence service (store + hash +
fsync + manifest + signature + custody) in a child process whose peak RSS is
reported. Last line: ``ingest/openssl = R``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import MB, make_files, openssl_sha256_mbps  # noqa: E402


def child(source: Path, data_dir: Path) -> None:
    """Runs in a fresh process so its peak RSS is the ingest's alone."""
    from gateway.evidence.identity import init_identity
    from gateway.evidence.manifest import ManifestInput
    from gateway.evidence.evidence_service import EvidenceService

    from bench._common import peak_rss_mb_self

    init_identity(data_dir)
    paths = sorted(source.iterdir())
    with EvidenceService(data_dir) as service:
        started = time.perf_counter()
        total = 0
        for path in paths:
            result = service.ingest_file(path, ManifestInput(source_path=str(path)))
            total += result.size
        service.sign_tree_head()
        seconds = time.perf_counter() - started
    print(json.dumps({"bytes": total, "seconds": seconds, "peak_rss_mb": peak_rss_mb_self()}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="egw-bench-ingest-"))
    size = int(args.gib * (1 << 30) / args.files) // (1 << 20) * (1 << 20)
    paths = make_files(workdir / "source", args.files, size)
    total = sum(p.stat().st_size for p in paths)
    reference = openssl_sha256_mbps(paths)
    data_dir = workdir / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--child", str(workdir / "source"), str(data_dir)],
                          check=True, capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = result["bytes"] / result["seconds"] / MB
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"files: {len(paths)} × {size / MB:.0f} MB = {total / MB:.0f} MB")
    print(f"openssl dgst -sha256: {reference:.0f} MB/s")
    print(f"egw ingest (store + SHA-256 + fsync + sign + custody): {ours:.0f} MB/s")
    print(f"ingest peak RSS: {result['peak_rss_mb']:.0f} MB (limit 150 MB)")
    print(f"ingest/openssl = {ours / reference:.2f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
