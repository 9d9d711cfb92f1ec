"""``egw simulate fingerprint``: a simulated R30x fingerprint module on a pty or TCP port.

The first stdout line is the endpoint (a pty path such as ``/dev/pts/7``, or
``socket://127.0.0.1:PORT``), flushed at once so a parent process can read it
and connect. SIGINT/SIGTERM end it cleanly; SIGUSR1 presses the finger and
SIGUSR2 lifts it, for trying a driver by hand.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from simulators.controls import EPILOGS
from simulators.fingerprint.server import FingerprintSimulator

__all__ = ["main", "build_parser"]


def _finger(value: str) -> str | float:
    if value in ("present", "absent"):
        return value
    if value.startswith("after:"):
        try:
            seconds = float(value[6:])
        except ValueError:
            seconds = -1.0
        if seconds >= 0:
            return seconds
    raise argparse.ArgumentTypeError(f"{value!r}: use present, absent or after:SECONDS (e.g. after:2.5)")


def _hex32(value: str) -> int:
    try:
        number = int(value, 16)
    except ValueError:
        number = -1
    if not 0 <= number <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{value!r}: give 1 to 8 hex digits, e.g. 0000BEEF")
    return number


def _rate(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError(f"{value!r}: a probability per reply packet, 0..1")
    return rate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="egw simulate fingerprint",
        description="Simulated R30x fingerprint module (ZFM-20/R307/AS608 protocol) on a pty or TCP.",
        epilog=EPILOGS["fingerprint"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tcp", type=int, metavar="PORT", help="listen on 127.0.0.1:PORT instead of a pty (0: any free port)")
    p.add_argument("--baud", type=int, default=57600, help="pace replies like a UART at this rate; 0 = no pacing (default 57600)")
    p.add_argument("--finger", type=_finger, default="absent", help="present | absent | after:SECONDS (default absent)")
    p.add_argument("--finger-id", type=int, default=1, help="which synthetic finger is pressed (default 1)")
    p.add_argument("--quality", type=float, default=0.9, help="press quality 0..1 (default 0.9)")
    p.add_argument("--quality-spread", type=float, default=0.0, help="each press varies by up to ± this much")
    p.add_argument("--password", type=_hex32, default=0, help="module password as hex (default 00000000)")
    p.add_argument("--address", type=_hex32, default=0xFFFFFFFF, help="module address as hex (default FFFFFFFF)")
    p.add_argument("--noise", type=_rate, default=0.0, help="chance of garbage bytes before a reply packet")
    p.add_argument("--corrupt", type=_rate, default=0.0, help="chance of one flipped bit in a reply packet")
    p.add_argument("--enrolled", type=int, default=0, help="pre-enrol fingers 1..N at library pages 0..N-1")
    p.add_argument("--library-size", type=int, default=200, help="template library pages (default 200)")
    p.add_argument("--packet-size", type=int, choices=(32, 64, 128, 256), default=128, help="data packet size")
    p.add_argument("--lenient-checksum", action="store_true", help="accept adafruit's wrong final-data checksum")
    p.add_argument("--seed", type=int, default=None, help="seed for noise and random codes (reproducible runs)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.quality <= 1.0:
        print("error: --quality must be between 0 and 1", file=sys.stderr)
        return 2
    sim = FingerprintSimulator(
        baud=args.baud, password=args.password, address=args.address, finger=args.finger,
        finger_id=args.finger_id, quality=args.quality, quality_spread=args.quality_spread,
        noise=args.noise, corrupt=args.corrupt,
        library_size=args.library_size, packet_size=args.packet_size, enrolled=args.enrolled,
        lenient_checksum=args.lenient_checksum, seed=args.seed,
    )

    def on_stop(signum: int, frame: FrameType | None) -> None:
        sim.request_stop()

    def on_press(signum: int, frame: FrameType | None) -> None:
        sim.press_finger()

    def on_lift(signum: int, frame: FrameType | None) -> None:
        sim.lift_finger()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGUSR1, on_press)
    signal.signal(signal.SIGUSR2, on_lift)
    try:
        endpoint = sim.serve_tcp(args.tcp) if args.tcp is not None else sim.serve_pty()
    except OSError as exc:
        print(f"error: cannot open the simulator's endpoint: {exc}", file=sys.stderr)
        print("hint: choose another --tcp port, or 0 for any free port", file=sys.stderr)
        return 1
    print(endpoint, flush=True)
    print(f"fingerprint simulator: baud {args.baud or 'unpaced'}, finger {args.finger}, "
          f"password {args.password:08X}, address {args.address:08X}", file=sys.stderr, flush=True)
    sim.wait()
    sim.stop()
    return 0
