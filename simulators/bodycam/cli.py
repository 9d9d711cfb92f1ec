"""``egw simulate bodycam``: N simulated recorders on one USB/IP server.

First stdout line: the server URL ``usbip://host:port`` (flushed), then one
line per recorder::

    1-1 serial=1000001 police=100001 password=000000 volume=/tmp/…/1000001 drift=+47

Later lines report events (``mounted 1-1 1000001 <dir>``). Commands on stdin,
one per line, drive faults from a test or an operator:
``unplug BUSID`` (yank: volume truncated and gone), ``replug BUSID``,
``eject BUSID``, ``record BUSID [N]`` (N new recordings for the next dock, refused
while mounted), ``halt BUSID EP`` (one clearable stall), ``quit``.

Fault switches (``--hostile-names``, ``--flood-entries N``, ``--zfy-invalid-gbk``,
``--changing-file``, …) apply to every recorder; ``--help`` describes each and
``simulators.bodycam.device`` documents what it does on the wire and on the volume.
``--tiny-recordings N`` adds N tiny recordings to stress a dock by file count.
SIGTERM / SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from simulators.controls import BODYCAM_STDIN, EPILOGS

from .device import BodyCamFaults, BodyCamSimulator

__all__ = ["main", "serve", "server_url", "build_parser", "build_recorders", "OFFICERS"]

OFFICERS = ["张三", "李四", "王五", "赵六", "陈七", "刘八", "周九", "吴十"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="egw simulate bodycam", description="Serve simulated body-worn cameras over USB/IP.",
                                epilog=EPILOGS["bodycam"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1, help="number of recorders (busids 1-1, 1-2, …)")
    p.add_argument("--listen", default="127.0.0.1:3240", help="HOST:PORT for the USB/IP server (port 0 = any free port)")
    p.add_argument("--volumes", help="directory where mounted volumes appear as <volumes>/<serial> (default: a temp dir)")
    p.add_argument("--recordings", type=int, default=4, help="recordings per recorder (video, video, audio, photo, …)")
    p.add_argument("--minutes", type=float, default=0.05, help="length of each video/audio recording in minutes")
    p.add_argument("--fill-mb", type=float, default=0, help="add one bulk file of this many MB (random bytes) per recorder")
    p.add_argument("--tiny-recordings", type=int, default=0, metavar="N",
                   help="add N tiny (52-byte) WAV recordings per recorder, one a minute over N/1440 days: "
                        "a dock stressed by file count (10000 files take about a second to make)")
    p.add_argument("--drift", type=float, default=47.0, help="recorder clock drift in seconds (recorder i gets i×drift)")
    p.add_argument("--small", action="store_true", help="320×180 at 5 fps instead of 1280×720 at 10 fps")
    p.add_argument("--password", default="000000", help="recorder password (6 characters)")
    p.add_argument("--serial-base", type=int, default=1000001, help="serial of the first recorder (7 digits)")
    p.add_argument("--container", choices=["avi", "mp4"], default="avi", help="video container (MJPG AVI or MPEG-4 MP4)")
    faults = p.add_argument_group("faults (applied to every recorder)")
    faults.add_argument("--hostile-names", action="store_true",
                        help="the volume also holds links out of it (to /etc/passwd, to /, and relative ones into bait "
                             "files in <volumes>/.outside-<serial>/), a second name for a real recording, names with "
                             "control characters, backslashes, a drive letter, invalid UTF-8, a 250-byte name and a FIFO")
    faults.add_argument("--truncated-video", action="store_true", help="one video is cut to 60%% of its bytes")
    faults.add_argument("--changing-file", action="store_true",
                        help="while mounted, the newest video grows by 4 KiB every 20 ms (a file still being written)")
    faults.add_argument("--locked", action="store_true", help="start locked out, as after five wrong passwords")
    faults.add_argument("--stall-endpoint", type=lambda s: int(s, 0), metavar="EP",
                        help="this endpoint (0x81 or 0x02) stalls every transfer, even after CLEAR_FEATURE(HALT)")
    faults.add_argument("--slow", type=float, metavar="BYTES_PER_S", help="throttle USB bulk transfers")
    faults.add_argument("--unplug-after-usb-bytes", type=int, metavar="N",
                        help="vanish from the bus once N bulk bytes moved (mid-command when N falls inside one)")
    faults.add_argument("--unplug-after-mount-seconds", type=float, help="yank the volume this long after it appears")
    faults.add_argument("--flood-entries", type=int, default=0, metavar="N",
                        help="the volume also holds MISC/ with N entries named with 255 bytes (over the driver's 200), "
                             "written one at a time at mount, and GetStorage advertises 4294967295 files")
    faults.add_argument("--zfy-invalid-gbk", action="store_true",
                        help="GetZFYInfo sends officer and unit names that are not valid GBK (serial and police "
                             "number stay valid)")
    return p


def build_recorders(args: argparse.Namespace, volumes: Path) -> list[tuple[str, BodyCamSimulator]]:
    """(busid, simulator) for every recorder the arguments ask for."""
    if args.count < 1:
        raise ValueError("--count must be at least 1")
    size = (320, 180) if args.small else (1280, 720)
    fps = 5.0 if args.small else 10.0
    out = []
    for i in range(args.count):
        serial = f"{args.serial_base + i:07d}"
        if len(serial) != 7:
            raise ValueError(f"serial {serial} is not 7 digits; choose another --serial-base")
        faults = BodyCamFaults(
            stall_endpoint=args.stall_endpoint, unplug_after_usb_bytes=args.unplug_after_usb_bytes,
            slow_bytes_per_s=args.slow, locked=args.locked, hostile_names=args.hostile_names,
            truncated_video=args.truncated_video, changing_file=args.changing_file,
            unplug_after_mount_seconds=args.unplug_after_mount_seconds, flood_entries=args.flood_entries,
            zfy_invalid_gbk=args.zfy_invalid_gbk,
        )
        sim = BodyCamSimulator(
            serial, user_no=f"{100001 + i:06d}", user_name=OFFICERS[i % len(OFFICERS)], password=args.password,
            battery=max(5, 95 - 7 * i), drift_seconds=args.drift * (i + 1), frame_size=size, fps=fps,
            video_seconds=args.minutes * 60, recordings=args.recordings, fill_mb=args.fill_mb,
            tiny_recordings=args.tiny_recordings,
            video_container=args.container, volumes_dir=volumes, faults=faults,
        )
        out.append((f"1-{i + 1}", sim))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host, _, port_text = args.listen.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        print(f"error: --listen must be HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return 2
    try:
        from firmware_bridge.usbip_server import UsbIpServer
    except ImportError as exc:
        print(f"error: the USB/IP server (firmware_bridge.usbip_server) is not available: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    try:
        return serve(args, UsbIpServer(host=host or "127.0.0.1", port=port), stop, sys.stdin, say)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def serve(args: argparse.Namespace, server: Any, stop: threading.Event, commands: TextIO | None,
          say: Callable[[str], None]) -> int:
    """Populate ``server`` with the recorders, announce them, obey ``commands`` until ``stop``."""
    own_volumes = args.volumes is None
    volumes = Path(args.volumes) if args.volumes else Path(tempfile.mkdtemp(prefix="egw-bodycam-volumes-"))
    volumes.mkdir(parents=True, exist_ok=True)
    recorders: list[tuple[str, BodyCamSimulator]] = []
    try:
        recorders = build_recorders(args, volumes)
        for busid, sim in recorders:
            sim.prepare()

            def mounted(serial: str, busid: str = busid, sim: BodyCamSimulator = sim) -> None:
                # Called inside the USB request that read SetMSDC's CSW: leave the bus from another thread.
                threading.Thread(target=_remove, args=(server, busid), daemon=True).start()
                say(f"mounted {busid} {serial} {sim.volume_path}")

            sim.on_mass_storage = mounted
            server.add_device(busid, sim)
        server.start()
        say(server_url(server))
        for busid, sim in recorders:
            d = sim.describe()
            say(f"{busid} serial={d['serial']} police={d['user_no']} password={d['password']} "
                f"volume={sim.volume_path} drift={d['drift_s']}")
        if commands is not None:
            threading.Thread(target=_commands, args=(commands, server, dict(recorders), say, stop), daemon=True,
                             name="bodycam-commands").start()
        while not stop.wait(0.1):
            pass
        return 0
    finally:
        try:
            server.stop()
        finally:
            for _, sim in recorders:
                sim.close()
            if own_volumes:
                shutil.rmtree(volumes, ignore_errors=True)


def server_url(server: Any) -> str:
    """``usbip://host:port`` from the server's ``address`` ((host, port) or "host:port")."""
    address = server.address
    if isinstance(address, str):
        return "usbip://" + address.removeprefix("usbip://").rstrip("/")
    return f"usbip://{address[0]}:{address[1]}"


def _remove(server: Any, busid: str) -> None:
    try:
        server.remove_device(busid)
    except (KeyError, ValueError, RuntimeError, OSError):
        pass


def _commands(commands: TextIO, server: Any, recorders: dict[str, BodyCamSimulator], say: Callable[[str], None],
              stop: threading.Event) -> None:
    """Fault control from stdin. EOF just ends control; the simulator keeps serving."""
    for line in commands:
        words = line.split()
        if not words:
            continue
        verb, rest = words[0], words[1:]
        if verb == "quit":
            stop.set()
            return
        sim = recorders.get(rest[0]) if rest else None
        if sim is None:
            say(f"error unknown recorder in {line.strip()!r}")
            continue
        busid = rest[0]
        try:
            _apply(verb, rest, sim, server)
        except (ValueError, OSError) as exc:
            say(f"error {line.strip()!r}: {exc}")
            continue
        say(f"ok {verb} {busid}")


def _apply(verb: str, rest: list[str], sim: BodyCamSimulator, server: Any) -> None:
    busid = rest[0]
    if verb == "unplug":
        sim.unplug()
        _remove(server, busid)
    elif verb == "replug":
        sim.replug()
        _remove(server, busid)
        server.add_device(busid, sim)
    elif verb == "record":
        sim.record(int(rest[1]) if len(rest) > 1 else 1)
    elif verb == "eject":
        sim.eject()
    elif verb == "halt" and len(rest) == 2:
        sim.halt(int(rest[1], 0))
    else:
        raise ValueError("unknown command; known: " + ", ".join(BODYCAM_STDIN))


if __name__ == "__main__":
    sys.exit(main())
