"""``egw demo``: the first thing a newcomer runs.

Today it shows the evidence core end to end on files it makes itself: a short
video with a burned-in overlay, a photo, a rapid-test result and a document
are ingested (stored, hashed, signed, logged), each is exported as a bundle,
and every bundle is verified offline. It exits 0 only when everything holds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.commands.common import add_json, print_json
from gateway.evidence.bundle import export_bundle, verify_bundle
from gateway.evidence.identity import init_identity
from gateway.evidence.manifest import ManifestInput
from gateway.evidence.service import EvidenceService


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run the end-to-end demo on loopback with simulated devices")
    p.add_argument("--workdir", type=Path, help="keep the demo's data here (default: a new temporary directory)")
    add_json(p)
    p.set_defaults(func=run)


def make_samples(directory: Path) -> list[tuple[Path, ManifestInput]]:
    """Sample captures, made here so the demo needs nothing but Python packages."""
    import cv2
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    video = directory / "DCIM" / "1234567_000042_20261129101500_0001_IMP.avi"
    video.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (320, 180))
    for i in range(30):
        frame = np.full((180, 320, 3), (40 + i * 3, 60, 90), np.uint8)
        cv2.putText(frame, f"2026-11-29 10:15:{i // 15:02d} 000042 1234567", (5, 170), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        writer.write(frame)
    writer.release()
    photo = directory / "DCIM" / "1234567_000042_20261129101700_0002.jpg"
    image = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(image, (160, 120), 60, (0, 200, 255), -1)
    cv2.imwrite(str(photo), image)
    result = directory / "rapidtest-0001.json"
    result.write_text(json.dumps({"sample": "spinach", "item": "organophosphate", "inhibition_percent": 62.5, "judgement": "positive"}))
    document = directory / "inspection-record.txt"
    document.write_text("On-site inspection record\nMarket stall 17, 2026-11-29\n")
    return [
        (video, ManifestInput(source_path=str(video.relative_to(directory)), device_id="bodycam-1234567", officer_id="000042", important=True)),
        (photo, ManifestInput(source_path=str(photo.relative_to(directory)), device_id="bodycam-1234567", officer_id="000042")),
        (result, ManifestInput(source_path=result.name, kind="result", device_id="rapidtest-sim", officer_id="inspector-7")),
        (document, ManifestInput(source_path=document.name, kind="document", officer_id="inspector-7")),
    ]


def run(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="egw-demo-"))
    data_dir = workdir / "data"
    started = time.monotonic()
    if not (data_dir / "identity" / "gateway.key").exists():
        init_identity(data_dir, gateway_id="gw-demo")
    items: list[dict[str, Any]] = []
    with EvidenceService(data_dir) as service:
        for path, item in make_samples(workdir / "samples"):
            result = service.ingest_file(path, item, priority=1 if item.important else 0)
            items.append({"name": path.name, "kind": service.state.get(result.evidence_id).kind,
                          "evidence_id": result.evidence_id, "sha256": result.sha256, "size": result.size})
        service.sign_tree_head()
        for entry in items:
            bundle = workdir / "bundles" / entry["evidence_id"]
            if bundle.exists():
                import shutil

                shutil.rmtree(bundle)
            export_bundle(service, entry["evidence_id"], bundle)
            checks = verify_bundle(bundle)
            entry["bundle"] = str(bundle)
            entry["verified"] = all(c.ok for c in checks)
            entry["failures"] = [c.line() for c in checks if not c.ok]
        entries, problems = service.custody.verify()
        state_counts = service.state.counts_by_state()
    summary = {
        "ok": all(e["verified"] for e in items) and not problems,
        "workdir": str(workdir),
        "items": items,
        "counts_by_state": state_counts,
        "custody": {"entries": entries, "ok": not problems},
        "seconds": round(time.monotonic() - started, 2),
    }
    if args.json:
        print_json(summary)
    else:
        _print_table(summary)
    return 0 if summary["ok"] else 1


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("item", "kind", "evidence id", "sha256", "bundle verified", title="egw demo: ingest → sign → custody → export → verify")
    for e in summary["items"]:
        table.add_row(e["name"], e["kind"], e["evidence_id"], e["sha256"][:16] + "…", "[green]yes[/]" if e["verified"] else "[red]NO[/]")
    console.print(table)
    for e in summary["items"]:
        for failure in e["failures"]:
            console.print(f"[red]{e['name']}: {failure}[/]")
    console.print(f"custody log: {summary['custody']['entries']} entries, {'verified' if summary['custody']['ok'] else '[red]NOT verified[/]'}")
    console.print(f"data and bundles in {summary['workdir']}; check one yourself with: egw verify {summary['items'][0]['bundle']}")
    console.print("[bold green]demo OK[/]" if summary["ok"] else "[bold red]demo FAILED[/]")
