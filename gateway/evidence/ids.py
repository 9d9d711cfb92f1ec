"""Evidence identifiers: UUIDv7 (RFC 9562), time-ordered so ids sort by ingest time.

By the wall clock at ingest, that is: a clock stepped back (NTP, an operator) makes later ids sort
earlier. Nothing relies on id order: uniqueness comes from the 74 random bits, delivery order from
the outbox's integer ids (``egw-seq`` on MQTT) and history from the custody log's sequence numbers.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["uuid7"]


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """48-bit Unix milliseconds, version 7, 74 random bits, RFC 9562 variant."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10xx
    return uuid.UUID(int=value)
