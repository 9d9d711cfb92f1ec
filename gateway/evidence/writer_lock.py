"""One writing process per data directory, and who it is.

Why: every writer used to clean ``blobs/tmp/*.part`` when it opened the store, so ``egw status`` run
during a 3 GB ``egw ingest`` deleted the copy in progress. Now exactly one process writes to a data
directory: it holds ``DATA_DIR/writer.lock`` with ``flock(LOCK_EX)`` and is the only one that removes
leftover temporary files (once, when it takes the lock). Readers never take the lock.

Why ``flock`` and not ``fcntl``/``lockf`` record locks: a POSIX record lock belongs to the process
and is dropped when the process closes ANY descriptor of the file (reading the holder's name from the
same process would release it); an ``flock`` lock belongs to the open file description, so it is
released exactly when that description closes — at the latest when the kernel reaps the holder after
``kill -9``. A stale ``writer.lock`` file (its holder died) therefore never blocks anybody: the file
is only a name tag, the lock is the kernel's. The descriptor is close-on-exec, so a program the
holder starts does not keep the lock alive after the holder is gone.

The file says who holds it (JSON: pid, command line, start time, whether it is ``egw run``), so a
command that has to wait can say for whom. The file is never deleted (unlinking it would let a
waiter lock the old inode while a newcomer locks a new one); a holder empties it when it lets go.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway.errors import GatewayError, StoreError
from gateway.evidence.private_files import private_dir

__all__ = ["LOCK_NAME", "Holder", "WriterBusyError", "WriterLock", "acquire", "held_here", "read_holder", "release"]

LOCK_NAME = "writer.lock"


class WriterBusyError(GatewayError):
    """Another process writes to this data directory and we were told not to wait (or waited long enough)."""

    default_hint = "wait for it to finish (or run the command without --no-wait); `egw status` works meanwhile"


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    started_at: float
    service: bool  # True: `egw run`, which accepts writing commands on DATA_DIR/control.sock
    argv: tuple[str, ...] = ()  # the holder's whole command line, for the operator who wonders


    def describe(self) -> str:
        return f"{self.command} (pid {self.pid})"


def _lock_path(data_dir: Path) -> Path:
    return Path(data_dir) / LOCK_NAME


def read_holder(data_dir: Path) -> Holder | None:
    """Who holds the lock now, or None when nobody does (whatever the file still says)."""
    path = _lock_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the name tag is current
        else:
            return None  # nobody holds it; the text, if any, is a dead holder's
        raw = os.read(fd, 64 * 1024)
    finally:
        os.close(fd)
    try:
        info = json.loads(raw)
        return Holder(int(info["pid"]), str(info["command"]), float(info["started_at"]), bool(info["service"]),
                      tuple(str(a) for a in info.get("argv") or ()))
    except (ValueError, KeyError, TypeError):
        # Held, but the holder has not written its name yet (it writes right after locking).
        return Holder(0, "another egw process", time.time(), False)


def describe_command(argv: Sequence[str] | None = None) -> str:
    """``egw ingest`` from ``python -m gateway ingest ./x --data-dir D``: enough to recognise it, no paths."""
    words = list(sys.argv[1:] if argv is None else argv)
    named = [w for w in words if not w.startswith("-")][:2]
    return " ".join(["egw", *named[:1]]) if named else "egw"


class WriterLock:
    """The lock on one data directory, held by this process while ``fd`` is open."""

    def __init__(self, data_dir: Path, fd: int, holder: Holder) -> None:
        self.data_dir = Path(data_dir)
        self.fd = fd
        self.holder = holder
        self.users = 1

    def close(self) -> None:
        try:
            os.ftruncate(self.fd, 0)  # a released lock names nobody
        except OSError:
            pass
        os.close(self.fd)


_held: dict[Path, WriterLock] = {}
_held_guard = threading.Lock()


def held_here(data_dir: Path) -> WriterLock | None:
    """The lock this process holds on ``data_dir``, if any."""
    with _held_guard:
        return _held.get(Path(data_dir).resolve())


def _try_lock(data_dir: Path, holder: Holder) -> WriterLock | None:
    try:
        private_dir(data_dir)
        fd = os.open(_lock_path(data_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open the writer lock {_lock_path(data_dir)}: {exc.strerror or exc}",
                         "check --data-dir / EGW_DATA_DIR and that you may write there") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise StoreError(f"cannot lock {_lock_path(data_dir)}: {exc.strerror or exc}",
                         "keep the data directory on a local file system that supports flock") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(asdict(holder)) + "\n").encode(), 0)
    return WriterLock(data_dir, fd, holder)


def acquire(data_dir: Path, *, service: bool = False, command: str | None = None, wait: bool = True,
            timeout_s: float | None = None, on_wait: Callable[[Holder], None] | None = None,
            give_way: Callable[[Holder], bool] | None = None, poll_s: float = 0.2) -> WriterLock | None:
    """Take the writer lock on ``data_dir`` (re-entrant within this process).

    While another process holds it: call ``on_wait(holder)`` once (to say whom we wait for), then poll.
    ``give_way(holder)`` returning True stops waiting and returns None (the caller found another way,
    e.g. the holder is ``egw run`` and takes the command over its control socket). Without ``wait``, or
    after ``timeout_s``, raise :class:`WriterBusyError` naming the holder.
    """
    key = Path(data_dir).resolve()
    with _held_guard:
        mine = _held.get(key)
        if mine is not None:
            mine.users += 1
            return mine
    me = Holder(os.getpid(), command or describe_command(), time.time(), service, tuple(sys.argv))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    said = False
    while True:
        lock = _try_lock(key, me)
        if lock is not None:
            with _held_guard:
                _held[key] = lock
            _recover(key)
            return lock
        holder = read_holder(key) or Holder(0, "another egw process", time.time(), False)
        if give_way is not None and give_way(holder):
            return None
        if not wait or (deadline is not None and time.monotonic() >= deadline):
            raise WriterBusyError(f"{holder.describe()} is writing to {data_dir}"
                                  + ("" if wait else "; not waiting (--no-wait)")
                                  + (f"; gave up after {round(timeout_s, 1):g} s" if wait and timeout_s is not None else ""))
        if not said and on_wait is not None:
            on_wait(holder)
            said = True
        time.sleep(poll_s)


def _recover(data_dir: Path) -> None:
    """The new holder removes copies its dead predecessors left half-done; nobody else may (they could
    be a live writer's). Once per taking of the lock, before any copy of ours starts."""
    from gateway.evidence.store import BlobStore

    if (data_dir / "blobs" / "tmp").is_dir():
        BlobStore(data_dir).recover()


def release(lock: WriterLock) -> None:
    """Let go of one use of the lock; the last use closes it (and empties the name tag)."""
    with _held_guard:
        lock.users -= 1
        if lock.users > 0:
            return
        if _held.get(lock.data_dir.resolve()) is lock:
            del _held[lock.data_dir.resolve()]
    lock.close()
