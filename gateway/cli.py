"""``egw``: the one command-line entry point.

Each sub-command lives in ``gateway.commands.<name>`` and exposes
``register(subparsers)``; the module list below is the whole registry, so a
new command is one line here and one module there.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import time
from collections.abc import Sequence

from gateway import __version__
from gateway.errors import ConfigError, GatewayError

__all__ = ["main", "build_parser", "run_command", "parse_delegated", "writes", "WRITING_COMMANDS"]

COMMAND_MODULES = [
    "gateway.commands.keys",
    "gateway.commands.ingest",
    "gateway.commands.export",
    "gateway.commands.verify",
    "gateway.commands.status",
    "gateway.commands.ls",
    "gateway.commands.custody",
    "gateway.commands.run",
    "gateway.commands.sign",
    "gateway.commands.dock",
    "gateway.commands.rapidtest",
    "gateway.commands.strip",
    "gateway.commands.mqtt",
    "gateway.commands.simulate",
    "gateway.commands.demo",
    "gateway.commands.enroll",
    "gateway.commands.sync",
    "gateway.commands.platform",
    "gateway.commands.conformance",
    "gateway.commands.record",
    "gateway.commands.terminal",
]


# Commands that write to the data directory: they need its writer lock, or run inside the `egw run`
# that holds it (see gateway.evidence.writer_lock and gateway.station.control).
WRITING_COMMANDS = frozenset({"ingest", "dock", "sign", "rapidtest", "sync", "export", "record"})
BUSY_EXIT = 75  # EX_TEMPFAIL: another process writes to the data directory and we did not wait
PIPE_CLOSED_EXIT = 141  # 128 + SIGPIPE: the reader of our output went away
# An OSError with one of these means the operator pointed at the wrong thing (exit 2, a usage error, as
# ConfigError); any other (EIO, ENOSPC…) is a failure of the machine (exit 1).
OPERATOR_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                             errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENAMETOOLONG, errno.ELOOP})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egw",
        description="Enforcement device gateway: capture, sign, keep custody of and deliver evidence.",
    )
    parser.add_argument("--version", action="version", version=f"egw {__version__}")
    parser.add_argument("--no-wait", action="store_true",
                        help="if another egw process is writing to the data directory, say who and exit (75) instead of waiting")
    parser.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                        help="wait at most this long for another writer to finish (default: as long as it takes)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def writes(args: argparse.Namespace) -> bool:
    """Does this command change the data directory (and so need its one writer)?"""
    if args.command == "strip":
        return bool(getattr(args, "record", False))
    if args.command == "record":  # `record draft` and `record templates` only read
        return getattr(args, "record_action", None) in ("new", "deliver")
    if args.command == "terminal":
        from gateway.commands.terminal import WRITING_ACTIONS

        return args.terminal_command in WRITING_ACTIONS
    return args.command in WRITING_COMMANDS


def parse_delegated(argv: list[str]) -> argparse.Namespace:
    """The service's parse of a client's argv (the client parsed it already; this only re-reads it)."""
    args = build_parser().parse_args(argv)
    if not writes(args):
        raise ConfigError(f"`egw {args.command}` is not a writing command; it runs in the client, not in egw run")
    return args


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command; a GatewayError becomes ``error:``/``hint:`` lines and an exit code, never a
    traceback. The same function runs a command locally and inside ``egw run`` for a client."""
    from gateway.commands.common import err

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=err())
        return 2
    except GatewayError as exc:
        print(f"error: {exc}\nhint: {exc.hint}", file=err())
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=err())
        return 130
    except BrokenPipeError:
        raise  # the reader of our output has gone: main() ends quietly
    except OSError as exc:  # a path that is missing, not a directory, not ours to write, a port in use…
        print(f"error: {describe_os_error(exc)}\nhint: {os_error_hint(exc)}", file=err())
        return 2 if exc.errno in OPERATOR_ERRNOS else 1


def describe_os_error(exc: OSError) -> str:
    """``cannot open /x/y: No such file or directory`` rather than ``[Errno 2] …`` and a traceback."""
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what


def os_error_hint(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "another program listens on that address: stop it, or choose another port (0 picks a free one where allowed)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose a path you may write to (or run as the user who owns it)"
    return "check the path on the command line (or in the configuration): that it exists and is the kind of file asked for"


def _run_as_writer(args: argparse.Namespace, argv: list[str]) -> int:
    """Take the data directory's writer lock and run here, or hand the command to the `egw run` that
    holds it, or wait for the other writer (one line on stderr naming it) — never two writers at once."""
    from gateway.commands.common import data_dir_of, say_waiting
    from gateway.evidence import writer_lock
    from gateway.station import control

    data_dir = data_dir_of(args)
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    said: list[bool] = []

    def waiting(holder: writer_lock.Holder) -> None:
        if not said:  # one line, however often we come back to waiting
            say_waiting(holder, data_dir)
            said.append(True)

    def service_ready(holder: writer_lock.Holder) -> bool:
        return holder.service and control.socket_path(data_dir).exists()

    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            lock = writer_lock.acquire(data_dir, command=f"egw {args.command}", wait=not args.no_wait,
                                       timeout_s=remaining, on_wait=waiting, give_way=service_ready)
        except writer_lock.WriterBusyError as exc:
            return _fail(exc, BUSY_EXIT)
        except GatewayError as exc:
            return _fail(exc, 1)
        if lock is not None:
            try:
                return run_command(args)
            finally:
                writer_lock.release(lock)
        try:
            return control.delegate(data_dir, argv)
        except control.ServiceUnavailable as exc:
            if exc.denied or args.no_wait or (deadline is not None and time.monotonic() >= deadline):
                return _fail(exc, control.REFUSED_EXIT if exc.denied else BUSY_EXIT)
            waiting(writer_lock.read_holder(data_dir) or writer_lock.Holder(0, "egw run", time.time(), True))
            time.sleep(0.2)  # the service is starting or stopping: wait for its socket or its lock


def _fail(exc: GatewayError, code: int) -> int:
    print(f"error: {exc}\nhint: {exc.hint}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``egw``; output piped into a reader that stops early (``egw ls | head``) ends quietly with 141
    (128 + SIGPIPE, what a shell shows for a program killed by the closed pipe), never a traceback."""
    try:
        return _main(argv)
    except BrokenPipeError:
        _discard_stdout()
        return PIPE_CLOSED_EXIT


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass


def _main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(args_list)
    if not writes(args):
        return run_command(args)
    try:
        return _run_as_writer(args, args_list)
    except KeyboardInterrupt:  # while waiting for another writer
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
