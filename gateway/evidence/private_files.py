"""Owner-only files and directories in the data directory, whatever the umask.

Evidence, its database and the custody log are for the gateway's own user: another local account
must not read a recording or the officers' names in ``state.db``. Relying on the caller's umask
(often 022) left them 0644, so every directory here is created 0700 and every file 0600, and an
older data directory is tightened when a writer opens it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "tighten", "create_private_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing; make ``path`` itself 0700 if it was looser."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path)
    return path


def tighten(path: Path) -> None:
    """Remove group and other permissions from an existing file or directory we own (no-op otherwise)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.chmod(path, DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE)


def create_private_file(path: Path) -> None:
    """Make sure ``path`` exists with mode 0600 before another library (SQLite) opens it: SQLite
    creates its -wal and -shm files with the database file's own mode, so they inherit it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE))
    except FileExistsError:
        tighten(path)
