"""``egw simulate signpad``: an STU-540 on USB/IP with a scripted signer.

The first stdout line is the pad's URL (``usbip://HOST:PORT/1-1``), flushed,
so a test or ``egw demo`` can read it and connect; everything else goes to
stderr. The process serves until SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from simulators.controls import EPILOGS

from .model import StuPadModel
from .signer import SignerScriptError, load_script, name_script

__all__ = ["main", "build_parser", "build_model", "parse_listen"]

BUSID = "1-1"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egw simulate signpad", description=__doc__, epilog=EPILOGS["signpad"],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="USB/IP address to serve on (default 127.0.0.1:0 = any free port)")
    parser.add_argument("--signer", default="Jane Doe", metavar="NAME_OR_SCRIPT",
                        help="a name to sign, a JSON script file, or JSON text (see simulators/signpad/signer.py)")
    parser.add_argument("--finish", choices=("ok", "cancel"), default="ok",
                        help="with a NAME: tap OK (default) or Cancel after signing")
    parser.add_argument("--clear-first", action="store_true", help="with a NAME: sign, tap Clear, then sign again")
    parser.add_argument("--unplug-mid-signature", action="store_true",
                        help="with a NAME: pull the cable halfway through the signature")
    parser.add_argument("--once", action="store_true",
                        help="play the script for one session only (default: again for every new prompt)")
    parser.add_argument("--serial", default="SIM540-0001", help="USB serial number string")
    return parser


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SignerScriptError(f"--listen {value!r} must look like 127.0.0.1:3240")
    return host, int(port)


def build_model(args: argparse.Namespace, **kwargs: Any) -> StuPadModel:
    """The model the CLI serves, from parsed arguments (tests call this without a server)."""
    spec = args.signer.strip()
    if spec.startswith(("{", "[")) or spec.endswith(".json"):
        script = load_script(spec)
    else:
        if not spec:
            raise SignerScriptError("--signer is empty; give a name or a JSON script")
        script = name_script(spec, finish=args.finish, clear_first=args.clear_first,
                             unplug_mid_signature=args.unplug_mid_signature)
    return StuPadModel(script, serial=args.serial, repeat=not args.once, **kwargs)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_listen(args.listen)
        model = build_model(args)
    except SignerScriptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from firmware_bridge.usbip_server import UsbIpServer
    except ImportError as exc:
        print(f"error: the USB/IP server is not available ({exc}); update the gateway", file=sys.stderr)
        return 2

    stop = threading.Event()
    server = UsbIpServer(host=host, port=port)
    server.add_device(BUSID, model)

    def drop_device() -> None:
        # Runs on the server's connection thread, inside the model call: the
        # server's per-device lock is re-entrant, so the device is removed before
        # the URB is answered and the host sees -ENODEV (a clean unplug).
        try:
            server.remove_device(BUSID)
        except KeyError:
            pass
        print("signpad: unplugged (fault injected)", file=sys.stderr, flush=True)

    model.on_unplug.append(drop_device)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    server.start()
    try:
        print(server.url(BUSID), flush=True)
        print(f"signpad: STU-540 serving, signer script of {len(model.script)} steps", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
