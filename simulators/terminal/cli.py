"""``egw simulate terminal``: a mobile terminal that pairs, uploads photos and a short video, follows results, and has a party sign a record.

Scriptable: one JSON object per line on stdout (``paired``, ``uploaded``, ``result``, ``case``, ``signing``, ``signed``, ``done``);
``--dir`` keeps the terminal's key and certificate, so a second run uses the same pairing.

    egw simulate terminal --pair 'egw-pair:?url=…&code=…&sha256=…' --officer 100001 --dir /tmp/t1 \\
        --photos 3 --video-seconds 2 --case A-17 --follow 5
    egw simulate terminal --dir /tmp/t1 --photos 1 --case A-17 --sign form.toml --qr link.svg

``--sign FORM`` (a .toml or .json form with a ``[party]`` table) starts a signing session on the station's pad and
fingerprint reader for a record citing this run's uploads, prints each state (``signing``) and finally the sealed
document's evidence id and one-time link (``signed``); ``--qr`` writes the link's QR code (SVG).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from simulators.controls import EPILOGS
from simulators.terminal.client import (
    PairingFailed,
    SigningFailed,
    TerminalClient,
    UploadFailed,
    follow_signing,
    parse_offer,
    start_signing,
    tus_upload,
)


def _say(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}, ensure_ascii=False), flush=True)


def make_photo(path: Path, index: int) -> Path:
    import cv2
    import numpy as np

    rng = np.random.default_rng(index)
    image = (rng.random((480, 640, 3)) * 60 + 120).astype(np.uint8)
    cv2.putText(image, f"egw terminal photo {index} {time.strftime('%H:%M:%S')}", (20, 240), cv2.FONT_HERSHEY_SIMPLEX, 0.9,
                (20, 20, 20), 2)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def make_video(path: Path, seconds: float, fps: int = 10) -> Path:
    """A short MJPEG AVI (every OpenCV build writes it); a real terminal sends MP4, the station does not care."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for frame_no in range(max(1, int(seconds * fps))):
        frame = np.full((240, 320, 3), (frame_no * 7) % 255, np.uint8)
        cv2.putText(frame, f"frame {frame_no}", (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


def follow_results(client: TerminalClient, seconds: float) -> None:
    """Print each ``results`` event of the live stream for ``seconds``."""
    from simulators.terminal.client import _connection

    conn = _connection(client.api_url, client.ssl_context(), timeout=seconds + 5)
    deadline = time.monotonic() + seconds
    try:
        conn.request("GET", "/api/v1/results/events")
        response = conn.getresponse()
        if conn.sock is not None:
            conn.sock.settimeout(max(0.5, seconds))
        event = ""
        while time.monotonic() < deadline:
            try:
                line = response.readline().decode("utf-8").rstrip("\n")
            except TimeoutError:
                break
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "results":
                _say("results", results=json.loads(line[6:]))
    finally:
        conn.close()


def load_form(path: Path) -> dict[str, Any]:
    import tomllib

    text = path.read_text(encoding="utf-8")
    form = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    if not isinstance(form, dict) or not isinstance(form.get("party"), dict):
        raise SigningFailed(f"the form {path} has no [party] table naming who signs")
    return form


def sign(client: TerminalClient, form_path: Path, template: str, case: str | None, cites: list[str], qr: Path | None) -> None:
    """Start a signing session for the form, print each state, end with the sealed document and its link."""
    form = load_form(form_path)
    request: dict[str, Any] = {"template": template, "form": {k: v for k, v in form.items() if k != "party"},
                               "party": form["party"], "cites": cites}
    if case:
        request["case_no"] = case
    session = start_signing(client, request)
    _say("signing", session_id=session["session_id"], state=session["state"])
    last = session
    for last in follow_signing(client, session["session_id"]):
        _say("signing", session_id=last["session_id"], state=last["state"], prompt=last.get("prompt"))
    if last["state"] != "delivered":
        error = last.get("error") or {}
        raise SigningFailed(f"signing session {last['session_id']} ended {last['state']}: {error.get('error')} ({error.get('hint')})")
    if qr is not None:
        qr.write_text(last["qr_svg"], encoding="utf-8")
    _say("signed", session_id=last["session_id"], evidence_id=last["evidence_id"], signing_evidence_id=last["signing_evidence_id"],
         seal=last["seal"], sha256=last["sha256"], link=last["link"], link_expires_at=last["link_expires_at"],
         case_no=last["case_no"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="egw simulate terminal", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOGS["terminal"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="where the terminal keeps its key, certificate and pairing")
    parser.add_argument("--pair", metavar="URI", help="the QR code's egw-pair: URI (skipped when --dir is already paired)")
    parser.add_argument("--officer", help="the officer carrying the terminal (unless the code was issued for one)")
    parser.add_argument("--photos", type=int, default=0, help="take and upload this many photos")
    parser.add_argument("--video-seconds", type=float, default=0, help="record and upload a video this long")
    parser.add_argument("--upload", type=Path, action="append", default=[], help="upload this file too (repeatable)")
    parser.add_argument("--case", help="put everything uploaded into this case number")
    parser.add_argument("--follow", type=float, default=0, metavar="SECONDS", help="print live results for this long")
    parser.add_argument("--sign", type=Path, metavar="FORM", help="have the party sign this record form (.toml/.json) on the station's pad")
    parser.add_argument("--template", default="onsite", help="the record's template for --sign (default: onsite)")
    parser.add_argument("--qr", type=Path, metavar="FILE.svg", help="with --sign: write the one-time link's QR code here")
    args = parser.parse_args(argv)
    client = TerminalClient(args.dir)
    started = time.monotonic()
    try:
        if not (args.dir / "pairing.json").exists():
            if not args.pair:
                print("error: this terminal is not paired\nhint: pass --pair with the station screen's QR code URI", file=sys.stderr)
                return 2
            answer = client.pair(parse_offer(args.pair), officer_id=args.officer)
            _say("paired", terminal_id=answer["terminal_id"], officer_id=answer["officer_id"], api_url=answer["api_url"],
                 seconds=round(time.monotonic() - started, 3))
        files = [(p, "application/octet-stream") for p in args.upload]
        files += [(make_photo(args.dir / f"photo-{i + 1}.jpg", i), "image/jpeg") for i in range(args.photos)]
        if args.video_seconds:
            files.append((make_video(args.dir / "clip.avi", args.video_seconds), "video/x-msvideo"))
        uploaded = []
        for path, media_type in files:
            sent = tus_upload(client, path, media_type=media_type)
            local = hashlib.sha256(path.read_bytes()).hexdigest() if path.stat().st_size < (256 << 20) else sent["sha256"]
            if sent["sha256"] != local:
                print(f"error: the station stored {sent['sha256']} for {path}, which is {local}", file=sys.stderr)
                return 1
            uploaded.append(sent["evidence_id"])
            _say("uploaded", file=str(path), **sent, seconds_since_start=round(time.monotonic() - started, 3))
        if args.case and uploaded:
            status, _, body = client.request("POST", f"/api/v1/cases/{args.case}/items", json.dumps({"evidence_ids": uploaded}).encode(),
                                             {"Content-Type": "application/json"})
            _say("case", status=status, case=json.loads(body))
        if args.follow:
            follow_results(client, args.follow)
        if args.sign:
            sign(client, args.sign, args.template, args.case, uploaded, args.qr)
    except SigningFailed as exc:
        print(f"error: {exc}\nhint: the station's answer above says what to do", file=sys.stderr)
        return 1
    except (PairingFailed, UploadFailed, OSError) as exc:
        print(f"error: {exc}\nhint: check the station address and that this terminal is paired and not revoked", file=sys.stderr)
        return 1
    _say("done", uploaded=len(uploaded), seconds=round(time.monotonic() - started, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
