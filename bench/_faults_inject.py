"""The faults of the campaign, one method each, and the plan that fires them during a trial.

A mixin of bench/faults.py's Trial (which owns the processes these methods kill, unplug or slow down): every
fault fires once, is healed, and writes what it did to the trial's events.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench._faults_harness import Broker, Child, FaultyProxy, TrialOptions


class TrialFaults:
    """What a fault needs of the trial, and the faults themselves."""

    opts: TrialOptions
    rng: random.Random
    data: Path
    gateway: Child | None
    platform: Child | None
    broker: Broker | None
    proxy: FaultyProxy | None
    recorders: Child
    mounted_disk: Path | None
    clock_file: Path | None

    def event(self, text: str) -> None:
        raise NotImplementedError

    def start_gateway(self) -> None:
        raise NotImplementedError

    def start_platform(self) -> None:
        raise NotImplementedError

    def _set_clock(self, offset_s: int) -> None:
        """Move the gateway's wall clock to real time + ``offset_s``: one atomic rename, so a reader sees the
        old offset or the new one, never an empty file."""
        assert self.clock_file is not None
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        os.replace(tmp, self.clock_file)

    def _fault_kill(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()
        self.gateway.stop()
        self.event("SIGKILL egw run")
        time.sleep(self.rng.uniform(0.2, 1.5))
        self.start_gateway()
        self.event("egw run restarted")

    def _fault_platform(self) -> None:
        assert self.platform is not None
        self.platform.kill()
        self.platform.stop()
        self.event("SIGKILL platform")
        time.sleep(self.rng.uniform(0.5, 3.0))
        for attempt in range(20):
            try:
                self.start_platform()
                break
            except (RuntimeError, AssertionError):
                time.sleep(0.5)  # the port may still be held by a connection in TIME_WAIT
        self.event("platform restarted on the same port")

    def _fault_broker(self) -> None:
        assert self.broker is not None
        self.broker.kill()
        self.event(f"mosquitto stopped for {self.opts.broker_down_s:g} s")
        time.sleep(self.opts.broker_down_s)
        self.broker.start()
        self.event("mosquitto restarted")

    def _wait_mid_copy(self, timeout: float = 30.0) -> tuple[bool, int]:
        """Wait for a partial blob past a random size (a moment in the middle of the work, not a random time);
        returns (found, threshold in bytes)."""
        partial = self.data / "blobs" / "tmp"
        threshold = int(self.rng.uniform(0.5, max(1.0, self.opts.fill_mb * 0.6)) * (1 << 20))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in list(partial.glob("*.part")):
                try:
                    if p.stat().st_size > threshold:
                        return True, threshold
                except OSError:
                    pass
            time.sleep(0.002)
        return False, threshold

    def _fault_unplug(self) -> None:
        mid_copy, threshold = self._wait_mid_copy()
        busid = f"1-{self.rng.randrange(1, self.opts.recorders + 1)}"
        self.recorders.send(f"unplug {busid}")
        self.event(f"unplug {busid} ({'mid-copy, partial blob > %d MB' % (threshold >> 20) if mid_copy else 'no copy in flight'})")
        time.sleep(self.rng.uniform(0.5, 2.0))
        self.recorders.send(f"replug {busid}")
        self.event(f"replug {busid}")

    def _fault_disk(self) -> None:
        assert self.mounted_disk is not None
        from bench._common import fill_disk

        filler = self.mounted_disk / "filler"
        written = fill_disk(filler)
        self.event(f"disk full ({written >> 20} MB filler on the {self.opts.disk_mb} MB data disk)")
        time.sleep(self.rng.uniform(2.0, 5.0))
        filler.unlink()
        self.event("disk given room (filler deleted)")

    def _fault_clock(self) -> None:
        assert self.clock_file is not None
        # Like unplug, at a moment in the middle of the work (a partial blob past a random size): a jump that
        # lands on an idle gateway proves little.
        mid_copy, threshold = self._wait_mid_copy(timeout=20.0)
        offset = self.rng.choice(self.opts.clock_jumps_s)
        hold = self.rng.uniform(5.0, 15.0)
        self._set_clock(offset)
        when = f"mid-copy, partial blob > {threshold >> 20} MB" if mid_copy else "no copy in flight"
        self.event(f"gateway clock jumped {offset / 3600:+.0f} h for {hold:.1f} s ({when})")
        time.sleep(hold)
        self._set_clock(0)
        self.event("gateway clock back to real time")

    def _fault_net(self) -> None:
        assert self.proxy is not None
        self.proxy.bad.set()
        self.proxy.drop_all()
        self.event("uplink degraded: 50-300 ms per chunk, random drops")
        time.sleep(self.rng.uniform(3.0, 8.0))
        self.proxy.bad.clear()
        self.event(f"uplink healed ({self.proxy.dropped} connections dropped)")

    def inject(self) -> None:
        # unplug and clock fire on their own trigger (a partial blob of random size), the others at a random moment
        plan = sorted((0.0 if f in ("unplug", "clock") else self.rng.uniform(0.5, self.opts.fault_window_s), f)
                      for f in self.opts.faults)
        threads = []
        t0 = time.monotonic()
        for at, fault in plan:
            def fire(at: float = at, fault: str = fault) -> None:
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                try:
                    getattr(self, f"_fault_{fault}")()
                except Exception as exc:  # noqa: BLE001 - an injection that failed is reported, not fatal
                    self.event(f"fault {fault} could not be injected: {exc!r}")
            # kill and platform restarts must not interleave with each other's process handles: one thread each.
            t = threading.Thread(target=fire, daemon=True, name=f"fault-{fault}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join(self.opts.broker_down_s + 60)

    # -- settle and count
