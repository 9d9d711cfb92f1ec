"""``egw simulate platform``: run the reference platform until interrupted.

stdout line 1: the ingest address (mutual TLS), e.g. ``127.0.0.1:50051``;
line 2: ``enroll 127.0.0.1:PORT`` (server-TLS enrolment listener). Both are
flushed at once so a parent process can read them and connect.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from protos.enrolment_token import format_token
from simulators.controls import EPILOGS
from simulators.platform.index import DEFAULT_TOKEN_TTL, Index
from simulators.platform.pki import PlatformPKI, fingerprint
from simulators.platform.server import DEFAULT_RESERVE, RECEIPT_FAULTS, PlatformServer

__all__ = ["main", "issue_token", "list_received"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="egw simulate platform", description="the reference evidence platform",
                                     epilog=EPILOGS["platform"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory for the CA, blobs and index (created)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="ingest address, mutual TLS (default 127.0.0.1:0 = any free port)")
    parser.add_argument("--enroll-listen", default="127.0.0.1:0", help="enrolment address, server TLS only")
    parser.add_argument("--insecure", action="store_true", help="plaintext on one port, for local experiments only")
    parser.add_argument("--reserve-bytes", type=int, default=DEFAULT_RESERVE, help="free disk to keep; uploads beyond it get RESOURCE_EXHAUSTED")
    parser.add_argument("--receipt-fault", choices=RECEIPT_FAULTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mqtt", default=None, metavar="URL",
                        help="also subscribe to egw/v1/# on this broker: verify and record what gateways publish, send signed commands")
    args = parser.parse_args(argv)
    server = PlatformServer(args.data, listen=args.listen, enroll_listen=args.enroll_listen, insecure=args.insecure,
                            receipt_fault=args.receipt_fault, reserve_bytes=args.reserve_bytes)
    address, enroll_address = server.start()
    print(address, flush=True)
    print(f"enroll {enroll_address}", flush=True)
    print(f"platform {server.pki.platform_id} ca-sha256 {fingerprint(server.pki.ca_cert)} data {args.data}",
          file=sys.stderr, flush=True)
    recorder = None
    if args.mqtt:
        from simulators.platform_mqtt import PlatformMqtt

        recorder = PlatformMqtt(args.data, args.mqtt, signing_key=args.data / "pki" / "platform.key").start()
        print(f"mqtt {args.mqtt}: recording egw/v1/# into {args.data}", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    if recorder is not None:
        recorder.__exit__()
    server.stop(1.0)
    return 0


def issue_token(data_dir: Path, ttl_s: float = DEFAULT_TOKEN_TTL) -> dict[str, Any]:
    """A new single-use enrolment token for the platform in ``data_dir`` (must have started once)."""
    info_path = data_dir / "platform.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{info_path} does not exist: start the platform once with `egw simulate platform --data {data_dir}`")
    info = json.loads(info_path.read_text())
    pki = PlatformPKI.load_or_create(data_dir)
    index = Index(data_dir)
    try:
        secret, expires = index.new_token(ttl_s)
    finally:
        index.close()
    port = int(info["enroll_address"].rsplit(":", 1)[1])
    return {"token": format_token(port, fingerprint(pki.ca_cert), secret), "expires_at": expires,
            "address": info["address"], "enroll_address": info["enroll_address"]}


def list_received(data_dir: Path) -> list[dict[str, Any]]:
    """What arrived: one entry per receipt (a blob shared by two gateways appears twice, stored once)."""
    index = Index(data_dir)
    try:
        return [{
            "receipt_id": r.receipt_id, "gateway_id": r.gateway_id, "evidence_id": r.evidence_id, "sha256": r.sha256,
            "size": r.size, "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.received_at)),
            "blob": str(data_dir / "blobs" / "sha256" / r.sha256[:2] / r.sha256[2:]),
        } for r in index.receipts()]
    finally:
        index.close()
