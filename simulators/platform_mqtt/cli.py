"""``egw simulate platform-mqtt``: run the platform's MQTT recorder, or send one signed command.

    egw simulate platform-mqtt --data DIR --mqtt URL [--signing-key PEM] [--gateway-keys DIR]
    egw simulate platform-mqtt cmd --data DIR --mqtt URL GATEWAY NAME [key=value ...]

The recorder prints ``mqtt://host:port egw/v1/#`` as its first line, then one
line per message received, until interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from google.protobuf import json_format

from simulators.controls import EPILOGS
from simulators.platform_mqtt import PlatformMqtt, PlatformMqttError, TlsFiles, send_command

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="platform data directory")
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL (mqtt:// or mqtts://)")
    parser.add_argument("--signing-key", type=Path, default=None, help="platform signing key (PEM)")
    parser.add_argument("--ca", default=None, help="CA file for mqtts://")
    parser.add_argument("--cert", default=None, help="client certificate for mqtts://")
    parser.add_argument("--key", default=None, help="client key for mqtts://")


def main(argv: list[str]) -> int:
    if argv and argv[0] == "cmd":
        parser = argparse.ArgumentParser(prog="egw simulate platform-mqtt cmd")
        _common(parser)
        parser.add_argument("--timeout", type=float, default=10.0)
        parser.add_argument("gateway")
        parser.add_argument("name")
        parser.add_argument("args", nargs="*", help="key=value")
        ns = parser.parse_args(argv[1:])
        args = dict(a.split("=", 1) if "=" in a else (a, "") for a in ns.args)
        try:
            reply = send_command(ns.data, ns.mqtt, ns.gateway, ns.name, args, signing_key=ns.signing_key,
                                 timeout=ns.timeout, tls=TlsFiles(ns.ca, ns.cert, ns.key))
        except PlatformMqttError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(json_format.MessageToDict(reply), indent=2, sort_keys=True))
        return 0 if reply.ok else 3
    parser = argparse.ArgumentParser(prog="egw simulate platform-mqtt", epilog=EPILOGS["platform-mqtt"], formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser)
    parser.add_argument("--gateway-keys", type=Path, default=None, help="directory of <gateway_id>.pem certificates")
    ns = parser.parse_args(argv)
    platform = PlatformMqtt(ns.data, ns.mqtt, signing_key=ns.signing_key, gateway_keys=ns.gateway_keys,
                            tls=TlsFiles(ns.ca, ns.cert, ns.key))
    try:
        platform.start()
    except PlatformMqttError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{ns.mqtt} egw/v1/#", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    last = 0
    try:
        while not done.wait(0.5):
            for rec in platform.records(after_id=last):
                mark = {True: "verified", False: f"BAD SIGNATURE ({rec.note})", None: rec.note or ""}[rec.verified]
                print(f"{rec.topic} {rec.kind} {mark}".rstrip(), flush=True)
                last = rec.id
    except KeyboardInterrupt:
        pass
    finally:
        platform.stop()
    return 0
