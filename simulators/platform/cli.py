"""``egw simulate platform``: run the reference platform until interrupted.

stdout line 1: the ingest address (mutual TLS), e.g. ``127.0.0.1:50051``;
line 2: ``enroll 127.0.0.1:PORT`` (server-TLS enrolment listener). Both are
flushed at once so a parent process can read them and connect.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from protos.enrolment_token import format_token
from protos.glibc_malloc import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, set_unless_operator_chose
from simulators.controls import EPILOGS
from simulators.platform.index import DEFAULT_TOKEN_TTL, Index
from simulators.platform.pki import PlatformPKI, fingerprint
from simulators.platform.revocation import publish_crl
from simulators.platform.server import DEFAULT_ENROL_FAILURES, DEFAULT_RESERVE, RECEIPT_FAULTS, PlatformServer, UploadLimits

__all__ = ["main", "issue_token", "revoke_gateway", "list_received", "platform_status", "PlatformAdminError"]

_GW_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# gRPC hands every received 1 MiB upload message to Python as a fresh allocation. With glibc's defaults
# the freed memory goes back to the kernel (trim) and the next message faults it in again: measured in
# bench/dock.py, 1.64-1.74 CPU s per GB received against 1.48-1.53 with these, on the same runs. The
# platform keeps up to 256 MiB of freed heap per arena instead; an operator's own setting wins.
LARGE_MESSAGE_MALLOC = {M_MMAP_THRESHOLD: 32 * 1024 * 1024, M_TRIM_THRESHOLD: 256 * 1024 * 1024}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="egw simulate platform", description="the reference evidence platform",
                                     epilog=EPILOGS["platform"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory for the CA, blobs and index (created)")
    parser.add_argument("--listen", default="127.0.0.1:0", help="ingest address, mutual TLS (default 127.0.0.1:0 = any free port)")
    parser.add_argument("--enroll-listen", default="127.0.0.1:0", help="enrolment address, server TLS only")
    parser.add_argument("--insecure", action="store_true", help="plaintext on one port, for local experiments only")
    parser.add_argument("--reserve-bytes", type=int, default=DEFAULT_RESERVE, help="free disk to keep; uploads beyond it get RESOURCE_EXHAUSTED")
    parser.add_argument("--enrol-failures", type=int, default=DEFAULT_ENROL_FAILURES,
                        help="refused enrolments per peer per minute before it gets RESOURCE_EXHAUSTED")
    defaults = UploadLimits()
    parser.add_argument("--workers", type=int, default=16, help="RPC worker threads (default 16): the platform's thread bound")
    parser.add_argument("--max-uploads-per-gateway", type=int, default=defaults.max_uploads_per_gateway,
                        help=f"uploads one gateway may run at once; more get RESOURCE_EXHAUSTED (default {defaults.max_uploads_per_gateway})")
    parser.add_argument("--upload-idle-timeout", type=float, default=defaults.idle_timeout_s, metavar="SECONDS",
                        help=f"cancel an upload stream that sends nothing for this long (default {defaults.idle_timeout_s:g})")
    parser.add_argument("--partial-ttl", type=float, default=defaults.partial_ttl_s, metavar="SECONDS",
                        help=f"delete partial uploads untouched for this long (default {defaults.partial_ttl_s:g} = 7 days)")
    parser.add_argument("--receipt-fault", choices=RECEIPT_FAULTS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mqtt", default=None, metavar="URL",
                        help="also subscribe to egw/v1/# on this broker: verify and record what gateways publish, send signed commands")
    parser.add_argument("--agency-unit", default=None, metavar="CODE",
                        help="also run the trust services (RFC 3161 TSA, the agency seal for unit CODE, the CRL) over HTTPS")
    parser.add_argument("--agency-name", default="电子印章测试单位", help="the unit's name on its seal (with --agency-unit)")
    parser.add_argument("--trust-listen", default="127.0.0.1:0", help="trust services address (with --agency-unit)")
    args = parser.parse_args(argv)
    set_unless_operator_chose(LARGE_MESSAGE_MALLOC)  # before the server's threads allocate
    server = PlatformServer(args.data, listen=args.listen, enroll_listen=args.enroll_listen, insecure=args.insecure,
                            receipt_fault=args.receipt_fault, reserve_bytes=args.reserve_bytes,
                            enrol_failures=args.enrol_failures, workers=args.workers,
                            limits=UploadLimits(args.max_uploads_per_gateway, args.upload_idle_timeout, args.partial_ttl))
    address, enroll_address = server.start()
    print(address, flush=True)
    print(f"enroll {enroll_address}", flush=True)
    trust = None
    if args.agency_unit:
        from simulators.platform.trust_services import TrustServices

        trust = TrustServices(args.data, server.pki, args.agency_unit, args.agency_name, listen=args.trust_listen)
        print(f"trust {trust.start()}", flush=True)
    print(f"platform {server.pki.platform_id} ca-sha256 {fingerprint(server.pki.ca_cert)} data {args.data}",
          file=sys.stderr, flush=True)
    recorder = None
    if args.mqtt:
        from simulators.platform_mqtt import PlatformMqtt

        recorder = PlatformMqtt(args.data, args.mqtt, signing_key=args.data / "pki" / "signer.key").start()
        print(f"mqtt {args.mqtt}: recording egw/v1/# into {args.data}", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(0.5):
        pass
    if recorder is not None:
        recorder.__exit__()
    if trust is not None:
        trust.stop()
    server.stop(1.0)
    return 0


class PlatformAdminError(ValueError):
    """An operator request the platform data refuses (unknown gateway, already enrolled); the message says what to do."""


def _platform_info(data_dir: Path) -> dict[str, Any]:
    info_path = data_dir / "platform.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{info_path} does not exist: start the platform once with `egw simulate platform --data {data_dir}`")
    return dict(json.loads(info_path.read_text()))


def issue_token(data_dir: Path, ttl_s: float = DEFAULT_TOKEN_TTL, *, gateway_id: str, site: str | None = None,
                reenrol: bool = False) -> dict[str, Any]:
    """A single-use enrolment token for one gateway id on the platform in ``data_dir`` (must have started once).

    A first enrolment token is refused for an id that already holds a certificate, and a re-enrolment token
    for one that holds none: the operator says which of the two is meant."""
    info = _platform_info(data_dir)
    if not _GW_ID_RE.match(gateway_id):
        raise PlatformAdminError(f"gateway id {gateway_id!r} is not 1–64 characters of A–Z a–z 0–9 . _ - starting with a letter or digit")
    pki = PlatformPKI.load_or_create(data_dir)
    index = Index(data_dir)
    try:
        enrolled = index.active_certificate(gateway_id) is not None
        if enrolled and not reenrol:
            raise PlatformAdminError(f"gateway {gateway_id} is already enrolled; to give it a new certificate (revoking the old one) "
                                     f"use `egw platform reenrol {gateway_id}`")
        if reenrol and not enrolled:
            raise PlatformAdminError(f"gateway {gateway_id} holds no certificate on this platform; "
                                     f"issue a first-enrolment token with `egw platform token --gateway-id {gateway_id}`")
        secret, expires = index.new_token(gateway_id, site=site, reenrol=reenrol, ttl_s=ttl_s)
    finally:
        index.close()
    port = int(info["enroll_address"].rsplit(":", 1)[1])
    return {"token": format_token(port, fingerprint(pki.ca_cert), secret), "expires_at": expires, "gateway_id": gateway_id,
            "site": site, "reenrol": reenrol, "address": info["address"], "enroll_address": info["enroll_address"]}


def revoke_gateway(data_dir: Path, gateway_id: str, reason: str = "unspecified") -> dict[str, Any]:
    """Revoke the gateway's certificate(s), append to the revocation log and publish the new CRL."""
    _platform_info(data_dir)
    pki = PlatformPKI.load_or_create(data_dir)
    index = Index(data_dir)
    try:
        with index.tx() as db:
            done = index.revoke(db, gateway_id, reason)
        if not done:
            raise PlatformAdminError(f"gateway {gateway_id} holds no unrevoked certificate on this platform; nothing was revoked "
                                     "(`egw platform ls --gateways` lists them)")
        _, number = publish_crl(pki, index)
    finally:
        index.close()
    return {"gateway_id": gateway_id, "revoked_serials": [format(r.serial, "x") for r in done], "crl_number": number,
            "crl": str(pki.directory / "crl.pem")}


def platform_status(data_dir: Path) -> dict[str, Any]:
    """Enrolled and revoked gateways, the CRL, receipts, and the MQTT recorder's signature verdicts."""
    import sqlite3

    from simulators.platform.revocation import crl_number

    index = Index(data_dir)
    try:
        gateways = index.db.execute("SELECT COUNT(DISTINCT gateway_id) FROM gateways WHERE revoked_at IS NULL").fetchone()[0]
        revocations = index.check_revocation_log()
        receipts = len(index.receipts())
    finally:
        index.close()
    crl_path = data_dir / "pki" / "crl.pem"
    number = crl_number(x509.load_pem_x509_crl(crl_path.read_bytes())) if crl_path.exists() else None
    mqtt: dict[str, int] = {"verified": 0, "failed": 0, "unchecked": 0}
    mqtt_db = data_dir / "platform_mqtt.db"
    if mqtt_db.exists():
        db = sqlite3.connect(f"file:{mqtt_db}?mode=ro", uri=True, timeout=30)
        try:
            for verified, count in db.execute("SELECT verified, COUNT(*) FROM messages WHERE kind IN ('custody-sth', 'result') "
                                              "GROUP BY verified"):
                mqtt[{1: "verified", 0: "failed", None: "unchecked"}[verified]] += int(count)
        finally:
            db.close()
    return {"enrolled_gateways": int(gateways), "revocations": revocations, "crl_number": number, "receipts": receipts,
            "mqtt_signatures": mqtt}


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
