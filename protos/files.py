"""Writing a small file so that a crash leaves either the old content or the new, never a torn one.

Shared by the gateway and the reference platform (keys, certificates, CRLs, enrolment state):
one implementation of "temporary file with its final mode from the start, fsync, rename, fsync
the directory", instead of a copy per module.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``. The file is created with ``mode`` (masked by nothing: a key is
    never world-readable, even briefly) and is durable when this returns."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; the caller's mode is not
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
