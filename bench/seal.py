"""How long the agency seal takes and how much it adds: ``python -m bench.seal [--runs 20]``.

Each run seals the same one-page record through the platform's trust services
on loopback (mutual TLS): profile fetch, preparation, the remote signature with
its signature time-stamp, DSS and the document time-stamp (PAdES B-LTA). The
goal (issue #16) is a p50 under 1.5 s. Also reported: the bytes the seal adds
and what they are made of (the stamp image, the two CMS containers, the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyhanko.pdf_utils.reader import PdfFileReader

from gateway.documents.seal import SealService, seal_pdf
from tests.seal_support import enrolled_gateway, record_pdf, trust_platform


def _composition(path: Path) -> dict[str, int]:
    with open(path, "rb") as handle:
        reader = PdfFileReader(handle, strict=False)
        sizes = {s.field_name: len(s.pkcs7_content) for s in reader.embedded_signatures}
    return sizes


async def _runs(url: str, gateway: object, record: Path, out_dir: Path, runs: int) -> list[float]:
    times = []
    async with SealService(url, gateway) as service:  # type: ignore[arg-type]
        for i in range(runs):
            start = time.perf_counter()
            await seal_pdf(record, out_dir / f"sealed-{i}.pdf", service)
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seal")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with trust_platform(root / "platform") as platform:
            gateway = enrolled_gateway(root / "gw", platform)
            record = record_pdf(root / "record.pdf")
            times = asyncio.run(_runs(platform.url, gateway, record, root, args.runs))
        sealed = root / "sealed-0.pdf"
        result = {
            "runs": args.runs,
            "p50_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "first_s": round(times[0], 3),
            "record_bytes": record.stat().st_size,
            "sealed_bytes": sealed.stat().st_size,
            "added_bytes": sealed.stat().st_size - record.stat().st_size,
            "cms_der_bytes": _composition(sealed),
        }
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
