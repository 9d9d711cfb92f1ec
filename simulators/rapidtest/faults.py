"""The analyzer's faults: how an attempt at a message is planned (which deterministic faults it plays) and
how they reach the wire (noise, bad checksums, NAK storms, the endless flood, the giant record, a baud-paced
write). A mixin of :class:`simulators.rapidtest.simulator.RapidTestSimulator`, which owns the link and the
session; the module docstring there describes each fault."""

from __future__ import annotations

import random
import select
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from firmware_bridge.astm import (
    ENQ,
    EOT,
    LF,
    MAX_FAILURES,
    STX,
    AstmSender,
    Record,
    encode_frame,
    encode_record,
)

if TYPE_CHECKING:
    from simulators.rapidtest.simulator import _Link, _Queued

__all__ = ["FAULTS", "HOSTILE_FAULTS", "LINK_FAULTS", "WireFaults"]

LINK_FAULTS = ("noise", "nak-storm", "bad-checksum", "stall", "abort")  # E1381 recovers from these by itself
HOSTILE_FAULTS = ("endless", "giant", "unplug")  # the host must refuse, reset or re-open
FAULTS = LINK_FAULTS + HOSTILE_FAULTS
_NOISE_ALPHABET = bytes(b for b in range(256) if b not in (ENQ, EOT, STX, LF))


@dataclass
class FaultPlan:
    """Faults for one attempt at one message."""

    stall: bool = False
    abort: bool = False
    endless: bool = False
    giant: bool = False
    unplug: bool = False
    storm: int = 0
    bad_checksum_frame: int | None = None
    storm_done: int = 0
    transmissions: dict[int, int] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)   # the message's record of faults played


class WireFaults:
    """Planning and playing the faults (needs the simulator's fault settings, link and log)."""

    faults: frozenset[str]
    fault_rate: float
    fault_every: int
    fault_from: int
    flood_bytes: int
    giant_bytes: int
    floods: int
    frames_corrupted: int
    baud: int | None
    encoding: str
    _fault_rng: random.Random
    _storms: int
    _link: _Link | None
    _stop: threading.Event

    def _init_faults(self, faults: tuple[str, ...], fault_rate: float, fault_every: int, fault_from: int,
                     flood_bytes: int, giant_bytes: int, seed: int | None) -> None:
        """The fault settings, and the fault randomness: its own generator (seed + 1), so faults never change
        which tests the analyzer makes."""
        self.faults = frozenset(faults)
        self.fault_rate = fault_rate
        self.fault_every = fault_every
        self.fault_from = fault_from
        self.flood_bytes = flood_bytes
        self.giant_bytes = giant_bytes
        self.floods = 0  # endless floods played (each ends when the host drops the link or at flood_bytes)
        self.frames_corrupted = 0
        self._storms = 0
        self._fault_rng = random.Random(None if seed is None else seed + 1)

    def _say(self, text: str) -> None:
        raise NotImplementedError

    def _drop_link(self) -> None:
        raise NotImplementedError

    def _plan_for(self, queued: _Queued) -> FaultPlan:
        """Deterministic faults for this attempt: each is played once per selected message."""
        plan = FaultPlan(applied=queued.faulted)
        number = queued.test.number
        if number >= self.fault_from and (number - self.fault_from) % self.fault_every == 0:
            todo = self.faults - queued.faulted
            if "endless" in todo or "giant" in todo:  # a hostile attempt carries nothing else
                plan.endless = "endless" in todo
                plan.giant = not plan.endless
                return plan
            plan.unplug = "unplug" in todo
            plan.stall = "stall" in todo
            plan.abort = "abort" in todo
            if "nak-storm" in todo:
                if "storm-length" not in queued.faulted:
                    self._storms += 1
                    queued.faulted.add("storm-length")
                plan.storm = MAX_FAILURES if self._storms % 2 == 0 else 3
            if "bad-checksum" in todo:
                plan.bad_checksum_frame = 1
        return plan

    def _with_giant_record(self, records: tuple[Record, ...]) -> tuple[Record, ...]:
        giant = Record.from_fields("C", {2: "1", 3: "I", 4: "x" * self.giant_bytes, 5: "G"})
        return (*records[:-1], giant, records[-1])

    def _flood(self, queued: _Queued) -> None:
        """The ``endless`` fault: ENQ, H, then intermediate frames without end (see the module doc)."""
        self._say(f"fault endless: frames without end in {queued.test.sample_id}")
        self.floods += 1
        header = encode_record(queued.test.records[0]).encode(self.encoding) + b"\r"
        opening = bytes([ENQ]) + encode_frame(1, header, True) + encode_frame(2, b"C|1|I|", False)
        # Frame numbers cycle mod 8, so 8 × 32 frames starting at FN 3 can be repeated verbatim.
        batch = b"".join(encode_frame((3 + k) % 8, b"x" * 240, False) for k in range(8 * 32))
        pending, sent = memoryview(opening), 0
        while not self._stop.is_set() and self._link is not None:
            if self.flood_bytes and sent >= self.flood_bytes:
                try:
                    self._link.write(bytes([EOT]))
                except OSError:
                    self._drop_link()
                self._say(f"flood ended after {sent} bytes; {queued.test.sample_id} will be sent again")
                return
            readable, writable, _ = select.select([self._link], [self._link], [], 0.2)
            try:
                if readable:
                    self._link.read()  # ACK/NAK/EOT from the host: ignored
                if writable:
                    written = self._link.write_some(pending)
                    sent += written
                    pending = pending[written:] if written < len(pending) else memoryview(batch)
            except (OSError, ConnectionError):
                self._drop_link()
        self._say(f"the host dropped the link after {sent} flood bytes; {queued.test.sample_id} will be sent again")

    def _flush(self, sender: AstmSender, plan: FaultPlan) -> None:
        data = sender.data_to_send()
        if not data or self._link is None:
            return
        out = bytearray()
        i = 0
        while i < len(data):
            if data[i] == STX:
                end = data.find(b"\n", i)
                end = len(data) if end < 0 else end + 1
                out += self._fault_frame(data[i:end], sender, plan)
                i = end
            else:
                if "noise" in self.faults and self._fault_rng.random() < self.fault_rate:
                    out += self._garbage()
                out.append(data[i])
                i += 1
        try:
            self._pace_write(bytes(out))
        except OSError:
            self._drop_link()

    def _garbage(self) -> bytes:
        return bytes(self._fault_rng.choice(_NOISE_ALPHABET) for _ in range(self._fault_rng.randint(1, 8)))

    def _fault_frame(self, frame: bytes, sender: AstmSender, plan: FaultPlan) -> bytes:
        index = sender.frame_index
        attempt = plan.transmissions.get(index, 0)
        plan.transmissions[index] = attempt + 1
        rng = self._fault_rng
        if plan.storm and index == 1 and plan.storm_done < plan.storm:
            plan.storm_done += 1
            if plan.storm_done == plan.storm:
                plan.applied.add("nak-storm")
            self.frames_corrupted += 1
            return self._bad_checksum(frame)
        if plan.bad_checksum_frame == index and attempt == 0:
            plan.applied.add("bad-checksum")
            self.frames_corrupted += 1
            return self._bad_checksum(frame)
        if "bad-checksum" in self.faults and rng.random() < self.fault_rate:
            self.frames_corrupted += 1
            return self._bad_checksum(frame)
        if "noise" in self.faults:
            prefix = self._garbage() if rng.random() < self.fault_rate else b""
            if rng.random() < self.fault_rate and len(frame) > 3:
                self.frames_corrupted += 1
                position = rng.randrange(1, len(frame) - 2)  # anything but STX and the final LF
                changed = bytearray(frame)
                changed[position] = (changed[position] + rng.randrange(1, 256)) & 0xFF
                frame = bytes(changed)
            return prefix + frame
        return frame

    @staticmethod
    def _bad_checksum(frame: bytes) -> bytes:
        good = int(frame[-4:-2], 16)
        return frame[:-4] + b"%02X" % ((good + 0x5A) & 0xFF) + frame[-2:]

    def _pace_write(self, data: bytes) -> None:
        link = self._link
        if link is None:
            return
        if not self.baud:
            link.write(data)
            return
        chunk = max(1, self.baud // 100)  # ~10 ms of line time per write
        for i in range(0, len(data), chunk):
            piece = data[i : i + chunk]
            link.write(piece)
            time.sleep(len(piece) * 10 / self.baud)  # 8N1: 10 bits per byte
