"""``egw conformance``: run the published contract against another implementation.

``egw conformance mqtt URL --gateway ID`` judges what a gateway publishes; ``egw conformance
platform HOST:PORT --token-file F --gateway-id ID`` plays a gateway against a platform. Exit 0 when every
rule that applied passed, 1 when one failed (or nothing could be checked).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509

from gateway.commands.common import add_json, out, print_json
from gateway.conformance.mqtt_kit import check_gateway
from gateway.conformance.platform_kit import check_platform
from gateway.conformance.report import Report
from gateway.errors import ConfigError
from gateway.evidence.identity import load_pem_certificates


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("conformance", help="check another implementation against the published contract (docs/)")
    kinds = p.add_subparsers(dest="kit", metavar="KIT")
    kinds.required = True
    m = kinds.add_parser("mqtt", help="listen to a gateway's MQTT topics and judge them by docs/mqtt.md and docs/schemas",
                         description="Subscribes to egw/v1/<ID>/# (QoS 1, MQTT 5 when the broker has it) for --seconds, "
                                     "then judges every message: topic, schema, ids, QoS, retain, egw-seq and, given "
                                     "the gateway's certificate, signatures.")
    m.add_argument("url", help="broker URL, mqtt://[user[:pass]@]host[:port] or mqtts://…")
    m.add_argument("--gateway", required=True, metavar="ID", help="the gateway id (topic root egw/v1/<ID>/)")
    m.add_argument("--seconds", type=float, default=10.0, help="how long to listen (default 10; retained topics arrive at once)")
    m.add_argument("--cert", type=Path, help="the gateway's certificate (PEM): signed payloads are then verified")
    m.add_argument("--trust", type=Path, help="the platform CA (PEM): the certificate must chain to it")
    m.add_argument("--ca-file", type=Path, help="CA for the broker's TLS certificate (mqtts://)")
    add_json(m)
    m.set_defaults(func=run_mqtt)
    p = kinds.add_parser("platform", help="play a gateway against a platform's EvidenceIngest and judge it by docs/grpc.md and docs/trust.md",
                         description="Enrols a throw-away gateway with the operator's token, uploads, interrupts and resumes, "
                                     "and tries every refusal the contract promises. Tokens are read from files (or - for "
                                     "standard input), never from the command line.")
    p.add_argument("address", help="the platform's ingest address HOST:PORT")
    p.add_argument("--token-file", type=Path, required=True, help="file holding an enrolment token for --gateway-id")
    p.add_argument("--gateway-id", required=True, help="the gateway id the token was issued for")
    p.add_argument("--second-token-file", type=Path, help="a token for a second gateway: checks that one gateway cannot "
                                                           "learn of or be receipted for another's uploads")
    p.add_argument("--second-gateway-id", help="the gateway id of the second token")
    add_json(p)
    p.set_defaults(func=run_platform)


def _pem(path: Path | None, what: str) -> list[x509.Certificate]:
    if path is None:
        return []
    try:
        return load_pem_certificates(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", f"give the path of a PEM file for {what}") from exc


def run_mqtt(args: argparse.Namespace) -> int:
    certs = _pem(args.cert, "the gateway certificate")
    trust = _pem(args.trust, "the trust anchor")
    report = check_gateway(args.url, args.gateway, args.seconds, certificate=certs[0] if certs else None,
                           trust=trust or None, ca_file=args.ca_file)
    return _print(report, args.json)


def _token(path: Path) -> str:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}", "write the token the operator gave you into a file") from exc
    if not text.strip():
        raise ConfigError(f"the token file {path} is empty", "write the token the operator gave you into it")
    return text.strip()


def run_platform(args: argparse.Namespace) -> int:
    second = None
    if args.second_token_file or args.second_gateway_id:
        if not (args.second_token_file and args.second_gateway_id):
            raise ConfigError("--second-token-file and --second-gateway-id go together", "give both, or neither")
        second = (_token(args.second_token_file), args.second_gateway_id)
    report = check_platform(args.address, _token(args.token_file), args.gateway_id, second=second)
    return _print(report, args.json)


def _print(report: Report, as_json: bool) -> int:
    if as_json:
        print_json(report.to_json())
    else:
        print("\n".join(report.lines()), file=out())
    return 0 if report.passed else 1
