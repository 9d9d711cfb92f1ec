"""``egw simulate rapidtest``: a rapid-test analyzer on a pty (default) or TCP.

The first line of stdout is the endpoint to give the driver: the pty slave
path (or the ``--link`` symlink to it), or ``socket://127.0.0.1:PORT``.  Progress goes to stderr.  With
``--tests N`` the simulator exits 0 once the host has acknowledged N
results; without it, it runs until SIGINT/SIGTERM, which end it cleanly
(an open session is closed with EOT first).

Faults are listed in ``--help`` and described in
:mod:`simulators.rapidtest.simulator`; ``endless``, ``giant`` and ``unplug``
model a broken or hostile instrument and a pulled cable, e.g. an analyzer
that behaves for two results, then floods the host, then behaves again::

    egw simulate rapidtest --tcp 0 --fault endless --fault-from 3 --fault-every 1000
    egw simulate rapidtest --link /tmp/ttyANALYZER --fault unplug --unplug-seconds 3
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

from simulators.controls import EPILOGS
from simulators.rapidtest.assays import GoldSettings, PesticideSettings
from simulators.rapidtest.faults import FAULTS
from simulators.rapidtest.simulator import KINDS, RapidTestSimulator

__all__ = ["main", "build_parser"]


def _faults(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in FAULTS:
            raise argparse.ArgumentTypeError(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egw simulate rapidtest",
        description="Simulate a food-safety rapid-test analyzer that reports each test over ASTM E1381/E1394.",
        epilog=EPILOGS["rapidtest"], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kind", choices=KINDS, default="pesticide",
                        help="pesticide-residue enzyme-inhibition analyzer or colloidal-gold strip reader")
    parser.add_argument("--tests", type=int, default=None, metavar="N",
                        help="stop once the host acknowledged N tests, one message each (default: run forever)")
    parser.add_argument("--interval", type=float, default=3.0, metavar="S", help="seconds between tests (3)")
    parser.add_argument("--tcp", type=int, default=None, metavar="PORT",
                        help="listen on 127.0.0.1:PORT instead of a pty (0 = any free port)")
    parser.add_argument("--baud", type=int, default=None, metavar="B",
                        help="pace output at a real line rate (8N1), e.g. 9600")
    parser.add_argument("--fault", type=_faults, action="extend", nargs="+", default=[], metavar="FAULT",
                        help=f"inject faults: {', '.join(FAULTS)} (several after one flag, comma-separated, "
                             "or the flag repeated). noise/bad-checksum: random damage; nak-storm, stall, abort: "
                             "the link-level failures of E1381; endless: an unbounded stream of frames that never "
                             "ends the message; giant: one record beyond the gateway's limit; unplug: the cable "
                             "pulled mid-message and plugged back in")
    parser.add_argument("--fault-rate", type=float, default=0.1, metavar="P",
                        help="per-frame probability for noise / bad-checksum (0.1)")
    parser.add_argument("--fault-every", type=int, default=3, metavar="K",
                        help="messages F, F+K, F+2K… get the deterministic faults, once each (3)")
    parser.add_argument("--fault-from", type=int, default=1, metavar="F",
                        help="first message number that gets deterministic faults (1); earlier ones go out cleanly")
    parser.add_argument("--flood-bytes", type=int, default=0, metavar="N",
                        help="endless: stop flooding after N bytes, send EOT and retry the message (0 = only when "
                             "the host drops the link)")
    parser.add_argument("--giant-bytes", type=int, default=5 * 1024 * 1024, metavar="N",
                        help="giant: size of the extra record (5 MiB, beyond the gateway's 4 MiB message limit)")
    parser.add_argument("--unplug-seconds", type=float, default=2.0, metavar="S",
                        help="unplug: how long the cable stays out (2 s)")
    parser.add_argument("--link", default=None, metavar="PATH",
                        help="pty: keep a symlink at PATH pointing at the pty (like /dev/serial/by-id/…) and print "
                             "it as the endpoint; needed with unplug, since the replugged pty gets a new name")
    parser.add_argument("--stall", type=float, default=35.0, metavar="S",
                        help="how long a stalled sender stays silent (35 s, beyond the 30 s receiver timer)")
    parser.add_argument("--reply-timeout", type=float, default=15.0, metavar="S",
                        help="sender timer: wait for ACK/NAK this long (E1381: 15 s)")
    parser.add_argument("--retry-delay", type=float, default=10.0, metavar="S",
                        help="wait before re-sending a message whose session aborted (10 s)")
    parser.add_argument("--limit", type=float, default=50.0, metavar="PCT",
                        help="pesticide: inhibition limit in %% (50, GB/T 5009.199)")
    parser.add_argument("--limit-exclusive", action="store_true",
                        help="pesticide: positive only when inhibition > limit (default: ≥ limit)")
    parser.add_argument("--gold-method", choices=("T/C", "T"), default="T/C", help="colloidal gold: judge on T/C or T")
    parser.add_argument("--seed", type=int, default=None, help="random seed for repeatable runs")
    parser.add_argument("--encoding", default="latin-1", help="text encoding on the wire (latin-1)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    faults = [name for group in args.fault for name in group]

    def log(text: str) -> None:
        if not args.quiet:
            print(f"rapidtest: {text}", file=sys.stderr, flush=True)

    try:
        simulator = _make_simulator(args, faults, log)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        return _serve(simulator, args, faults, log, stop)
    finally:
        simulator.stop()
        log(f"stopped after {len(simulator.delivered)} acknowledged result message(s)")
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _make_simulator(args: argparse.Namespace, faults: list[str], log: Callable[[str], None]) -> RapidTestSimulator:
    """The analyzer the command line describes (ValueError names a setting it cannot run with)."""
    return RapidTestSimulator(
        args.kind, tests=args.tests, interval=args.interval, faults=faults, fault_rate=args.fault_rate,
        fault_every=args.fault_every, seed=args.seed, reply_timeout=args.reply_timeout,
        retry_delay=args.retry_delay, stall_seconds=args.stall, baud=args.baud, encoding=args.encoding,
        fault_from=args.fault_from, flood_bytes=args.flood_bytes, giant_bytes=args.giant_bytes,
        unplug_seconds=args.unplug_seconds, link=args.link,
        pesticide=PesticideSettings(args.limit, not args.limit_exclusive),
        gold=GoldSettings(method=args.gold_method), log=log,
    )


def _serve(simulator: RapidTestSimulator, args: argparse.Namespace, faults: list[str], log: Callable[[str], None],
           stop: threading.Event) -> int:
    """Open the pty or TCP port, print its URL, and run until stopped or every result is acknowledged."""
    if args.link and args.tcp is not None:
        print("error: --link names a pty symlink; it cannot be used with --tcp", file=sys.stderr)
        return 2
    try:
        url = simulator.serve_tcp(args.tcp) if args.tcp is not None else simulator.serve_pty()
    except OSError as exc:
        print(f"error: cannot open the {'TCP port' if args.tcp is not None else 'pty'}: {exc}",
              file=sys.stderr)
        return 1
    print(url, flush=True)
    log(f"{args.kind} analyzer ready at {url}" + (f", faults: {', '.join(faults)}" if faults else ""))
    while not stop.is_set():
        if simulator.wait_delivered(0.2):
            stop.wait(0.5)  # let the final EOT reach the host before the link closes
            break
    return 0
