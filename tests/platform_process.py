"""A reference platform with its trust services as a child process (`egw simulate platform --agency-unit`),
which a test can stop and start again on the same ports: the station sees it go away and come back."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path

from tests.conftest import spawn_egw
from tests.uplink_support import stop_process

__all__ = ["PlatformProcess", "UNIT_CODE", "UNIT_NAME"]

UNIT_CODE = "110105000000"
UNIT_NAME = "北京市公安局朝阳分局"


def _lines(proc: subprocess.Popen[str], count: int, patience_s: float = 30) -> list[str]:
    """The first ``count`` stdout lines (raw reads: a buffered readline could hide a line from select())."""
    assert proc.stdout is not None
    fd, buffered, deadline = proc.stdout.fileno(), b"", time.monotonic() + patience_s
    while buffered.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            stop_process(proc)
            raise AssertionError(f"the platform printed {buffered!r} within {patience_s} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"the platform exited: {proc.wait()} {proc.stderr.read() if proc.stderr else ''}")
        buffered += chunk
    return buffered.decode().splitlines()[:count]


class PlatformProcess:
    """``egw simulate platform`` with trust services; ``stop()`` then ``start()`` keeps its addresses."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.proc: subprocess.Popen[str] | None = None
        self.address = "127.0.0.1:0"
        self.enroll_address = "127.0.0.1:0"
        self.trust_url = ""

    def start(self) -> PlatformProcess:
        trust_listen = self.trust_url.removeprefix("https://") or "127.0.0.1:0"
        self.proc = spawn_egw("simulate", "platform", "--data", str(self.data), "--listen", self.address,
                              "--enroll-listen", self.enroll_address, "--agency-unit", UNIT_CODE, "--agency-name", UNIT_NAME,
                              "--trust-listen", trust_listen)
        address, enroll, trust = _lines(self.proc, 3)
        assert enroll.startswith("enroll ") and trust.startswith("trust https://"), (enroll, trust)
        self.address, self.enroll_address, self.trust_url = address, enroll.split()[1], trust.split()[1]
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    @property
    def ca(self) -> Path:
        return self.data / "pki" / "ca.pem"

    @property
    def tsa(self) -> Path:
        return self.data / "pki" / "tsa.pem"
