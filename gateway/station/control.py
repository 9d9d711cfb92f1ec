"""The control socket: writing commands run inside ``egw run`` when it holds the data directory.

Why: a data directory has one writer (``gateway.evidence.writer_lock``). While ``egw run`` is that
writer, ``egw ingest``/``dock``/``sign``/``rapidtest``/``sync``/``strip read --record`` typed at the
station would otherwise have to wait for the service to stop. Instead the CLI (the client) parses and
checks the command line itself (bad arguments fail locally), then sends the argv, its working directory
and its EGW_* environment over ``DATA_DIR/control.sock``; the service runs the very same command
implementation in a worker thread, with ``open_evidence()`` returning the service's own
EvidenceService and ``common.out()/err()`` bound to the socket. Output streams back line by line,
then the exit code.

Wire format: newline-delimited JSON. Client → service: one request object
``{"argv": [...], "cwd": "...", "env": {...}}``; afterwards the client sends nothing, and closing (or
half-closing) its side means "cancel" (Ctrl-C). Service → client: ``{"out": text}``, ``{"err": text}``
frames, then ``{"exit": code}``.

Who may connect: the socket is owner-only (0600) and the service refuses any peer whose uid
(SO_PEERCRED) differs from its own, so another account on the station cannot make the service
read files or write evidence in its name. The service reads the files a command names itself: same
machine, same uid.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.evidence.evidence_service import EvidenceService

__all__ = [
    "CANCELLED_EXIT",
    "REFUSED_EXIT",
    "SOCKET_NAME",
    "ControlServer",
    "ServiceUnavailable",
    "absolutize_paths",
    "client_env",
    "delegate",
    "socket_path",
]

log = logging.getLogger("egw.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 30.0
REFUSED_EXIT = 77  # EX_NOPERM
CANCELLED_EXIT = 130
FORWARDED_ENV_PREFIX = "EGW_"
NOT_FORWARDED = {"EGW_KEY_PASSPHRASE"}  # the service unlocked its key at start; a secret has no reason to travel


class ServiceUnavailable(GatewayError):
    """The service's socket is not (or no longer) accepting; the caller may wait for the lock instead.
    ``denied``: it exists but we may not connect (another user's service): waiting will not help."""

    default_hint = "run the command again; `egw status` shows whether `egw run` serves this data directory"

    def __init__(self, message: str, hint: str | None = None, *, denied: bool = False) -> None:
        super().__init__(message, hint)
        self.denied = denied


def socket_path(data_dir: Path) -> Path:
    return Path(data_dir) / SOCKET_NAME


def client_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The EGW_* settings the service applies to a delegated command (language, upload settings …)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k.startswith(FORWARDED_ENV_PREFIX) and k not in NOT_FORWARDED}


def absolutize_paths(args: argparse.Namespace, cwd: Path) -> None:
    """Resolve every relative ``Path`` argument against the client's working directory (the service's is
    elsewhere): ``egw ingest ./clip.mp4`` means the client's ``./clip.mp4``. Paths are parsed with
    ``type=Path`` throughout, which is what makes this one generic pass enough."""
    for name, value in vars(args).items():
        if isinstance(value, Path) and not value.is_absolute():
            setattr(args, name, cwd / value)
        elif isinstance(value, list) and value and all(isinstance(v, Path) for v in value):
            setattr(args, name, [v if v.is_absolute() else cwd / v for v in value])


SUN_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


@contextmanager
def _sun_path(path: Path) -> Iterator[str]:
    """An address for ``bind``/``connect`` however deep the data directory is: past the 107-byte limit of
    a socket address, the same file is reached through this process's descriptor of its directory."""
    if len(os.fsencode(str(path))) <= SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# ---- the service side ------------------------------------------------------------------------

class _FrameStream(io.TextIOBase):
    """A text stream that sends each complete line (or whatever is flushed) as one frame."""

    def __init__(self, connection: _Connection, kind: str) -> None:
        super().__init__()
        self.connection = connection
        self.kind = kind
        self.pending = ""

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase declares a plain attribute; read-only here
        return "utf-8"

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        if "\n" in self.pending:  # one frame per line: the client prints each as soon as it arrives
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                self.connection.send({self.kind: line + "\n"})
        return len(text)

    def flush(self) -> None:
        if self.pending:
            text, self.pending = self.pending, ""
            self.connection.send({self.kind: text})


class _Connection:
    """One client: frames out (thread-safe), EOF in = cancel."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.cancel = threading.Event()
        self.gone = False
        self.delegation: Any = None  # common.Delegation once the command runs

    def stop_command(self, reason: str) -> None:
        if self.delegation is not None and not self.cancel.is_set():
            self.delegation.cancel_reason = reason
        self.cancel.set()

    def send(self, frame: dict[str, Any]) -> None:
        data = (json.dumps(frame) + "\n").encode("ascii")  # escaped: a frame is exactly one line
        with self.send_lock:
            if self.gone:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.gone = True  # the client went away: the command learns it through cancelled()
                self.cancel.set()

    def read_request(self) -> dict[str, Any]:
        """The one request line (bounded in size and in time: a client that connects and says nothing
        does not hold a thread forever)."""
        self.sock.settimeout(REQUEST_TIMEOUT_S)
        buffer = b""
        while b"\n" not in buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ValueError("the client closed the connection before sending a request")
            buffer += chunk
            if len(buffer) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
        self.sock.settimeout(None)
        request = json.loads(buffer.partition(b"\n")[0])
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list):
            raise ValueError("malformed request")
        return request

    def watch_for_hangup(self) -> None:
        """Block until the client closes its side (Ctrl-C, or the end of the exchange): then cancel."""
        try:
            while self.sock.recv(4096):
                pass
        except OSError:
            pass
        self.cancel.set()


def _close_gently(sock: socket.socket) -> None:
    """End our side, then read what the client still sends until it closes: closing a Unix socket with
    unread input resets the connection, and the client could lose the frames we sent last."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2.0)
        while sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # also wakes the hang-up watcher if the client never closed
        except OSError:
            pass
        sock.close()


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


RunCommand = Callable[[argparse.Namespace], int]
ParseAndCheck = Callable[[list[str]], argparse.Namespace]


class ControlServer:
    """Accepts writing commands for ``egw run``; each runs in its own worker thread."""

    def __init__(self, data_dir: Path, service: EvidenceService, *, parse: ParseAndCheck | None = None,
                 run_command: RunCommand | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.path = socket_path(self.data_dir)
        self.service = service
        self.parse = parse or _default_parse
        self.run_command = run_command or _default_run
        self.listener: socket.socket | None = None
        self.accepting = threading.Event()
        self.workers: set[threading.Thread] = set()
        self.connections: set[_Connection] = set()
        self.guard = threading.Lock()

    def start(self) -> Path:
        """Bind ``DATA_DIR/control.sock`` (owner-only) and accept in a background thread. Only the holder
        of the writer lock calls this, so a socket file already there is a dead service's."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Bound inside a fresh 0700 directory, made 0600, then renamed into place: there is no moment at
        # which the socket is reachable by others (changing the umask instead would be process-wide).
        private = Path(tempfile.mkdtemp(prefix=".control-", dir=self.data_dir))
        try:
            with _sun_path(private / SOCKET_NAME) as address:
                listener.bind(address)
            os.chmod(private / SOCKET_NAME, 0o600)
            os.replace(private / SOCKET_NAME, self.path)
        finally:
            shutil.rmtree(private, ignore_errors=True)
        listener.listen(16)
        self.listener = listener
        self.accepting.set()
        threading.Thread(target=self._accept_loop, name="control-accept", daemon=True).start()
        return self.path

    def _accept_loop(self) -> None:
        assert self.listener is not None
        while self.accepting.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            thread = threading.Thread(target=self._serve, args=(sock,), name="control-client", daemon=True)
            with self.guard:
                self.workers.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        connection = _Connection(sock)
        with self.guard:
            self.connections.add(connection)
        try:
            self._serve_connection(connection)
        finally:
            with self.guard:
                self.connections.discard(connection)
                self.workers.discard(threading.current_thread())
            _close_gently(sock)

    def _serve_connection(self, connection: _Connection) -> None:
        uid = peer_uid(connection.sock)
        if uid != os.getuid():
            log.warning("control socket: refused a client with uid %d (the service runs as uid %d)", uid, os.getuid())
            connection.send({"err": f"error: refused: the service on {self.data_dir} runs as another user (uid {os.getuid()})\n"
                                    "hint: run the command as that user\n"})
            connection.send({"exit": REFUSED_EXIT})
            return
        if not self.accepting.is_set():
            connection.send({"err": f"error: egw run is stopping; {self.data_dir} is not taking commands now\n"
                                    "hint: run the command again once it has stopped (or restarted)\n"})
            connection.send({"exit": 75})
            return
        try:
            request = connection.read_request()
            args = self.parse([str(a) for a in request["argv"]])
            absolutize_paths(args, Path(str(request.get("cwd") or "/")))
            env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
        except (ValueError, TypeError, AttributeError, OSError, SystemExit, GatewayError) as exc:
            connection.send({"err": f"error: the service could not take this command: {exc}\n"})
            connection.send({"exit": 2})
            return
        watcher = threading.Thread(target=connection.watch_for_hangup, name="control-hangup", daemon=True)
        watcher.start()
        code = self._run(connection, args, env)
        connection.send({"exit": code})

    def _run(self, connection: _Connection, args: argparse.Namespace, env: dict[str, str]) -> int:
        from gateway.commands import common
        from gateway.i18n import use_language

        args.data_dir = self.data_dir  # the client reached this socket through this very directory
        out, err = _FrameStream(connection, "out"), _FrameStream(connection, "err")
        delegation = common.Delegation(self.service, cast(TextIO, out), cast(TextIO, err), env, connection.cancel)
        connection.delegation = delegation
        log.info("control socket: running %s for a client", " ".join(["egw", str(getattr(args, "command", "?"))]))
        with common.delegated(delegation), use_language(env.get("EGW_LANG")):
            try:
                code = self.run_command(args)
            except BaseException as exc:
                log.exception("control socket: the command failed inside the service")
                err.write(f"error: the command failed inside egw run: {type(exc).__name__}: {exc}\n"
                          "hint: the service log has the details; nothing half-done was kept\n")
                code = 1
            finally:
                out.flush()
                err.flush()
        return code

    def stop(self, grace_s: float = 8.0) -> None:
        """Stop accepting, ask running commands to stop (cancelled()), wait up to ``grace_s`` for them."""
        self.accepting.clear()
        if self.listener is not None:
            try:
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not)
                except OSError:
                    pass
                self.listener.close()
            finally:
                self.path.unlink(missing_ok=True)
        with self.guard:
            workers = list(self.workers)
            for connection in self.connections:
                connection.stop_command("egw run is stopping")
        deadline = time.monotonic() + grace_s  # one grace for all of them, not one each
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("a command run for a client did not stop within %.0f s (it does not poll cancelled())", grace_s)


def _default_parse(argv: list[str]) -> argparse.Namespace:
    from gateway.cli import parse_delegated

    return parse_delegated(argv)


def _default_run(args: argparse.Namespace) -> int:
    from gateway.cli import run_command

    return run_command(args)


# ---- the client side -------------------------------------------------------------------------

def delegate(data_dir: Path, argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
    """Run ``argv`` inside the service that holds ``data_dir``; print what it prints; return its exit code.

    Raises :class:`ServiceUnavailable` only when nothing was sent (the caller may then wait for the lock
    and run the command itself). Ctrl-C half-closes the connection: the service cancels the command and
    what it says about that is printed before we return 130."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _sun_path(socket_path(data_dir)) as address:
            sock.connect(address)
    except OSError as exc:
        sock.close()
        denied = exc.errno in (errno.EACCES, errno.EPERM)
        raise ServiceUnavailable(f"cannot reach egw run on {data_dir}: {exc.strerror or exc}",
                                 "run the command as the user that runs egw run" if denied else None, denied=denied) from exc
    request = {"argv": list(argv), "cwd": str(cwd or Path.cwd()), "env": client_env() if env is None else env}
    try:
        sock.sendall((json.dumps(request) + "\n").encode())
    except OSError as exc:
        sock.close()
        raise ServiceUnavailable(f"egw run on {data_dir} closed the connection: {exc.strerror or exc}") from exc
    with sock:
        return _relay(sock, data_dir)


def _relay(sock: socket.socket, data_dir: Path) -> int:
    reader = sock.makefile("rb")
    interrupted = False
    while True:
        try:
            line = reader.readline()
        except KeyboardInterrupt:
            if interrupted:
                return CANCELLED_EXIT  # a second Ctrl-C: stop waiting for the service's last words
            interrupted = True
            try:
                sock.shutdown(socket.SHUT_WR)  # the service sees EOF: the command is cancelled
            except OSError:
                pass
            sys.stderr.write("interrupted: asking egw run to stop the command…\n")
            sys.stderr.flush()
            continue
        except OSError:
            line = b""
        if not line:
            sys.stderr.write(f"error: egw run on {data_dir} stopped before the command finished\n"
                             "hint: run the command again; items already stored are recognised, not duplicated\n")
            return CANCELLED_EXIT if interrupted else 1
        frame = json.loads(line)
        if "out" in frame:
            sys.stdout.write(frame["out"])
            sys.stdout.flush()
        elif "err" in frame:
            sys.stderr.write(frame["err"])
            sys.stderr.flush()
        elif "exit" in frame:
            return CANCELLED_EXIT if interrupted else int(frame["exit"])
