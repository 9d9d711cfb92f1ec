"""What every fuzz target shares: the invariant a target checks and how it reports a breach, the ways a
transport may chunk bytes, and the Harness record the engine (bench/fuzz.py) runs."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass


class InvariantViolation(AssertionError):
    """A harness check failed: a buffer grew past its bound, an event loop did not progress, …"""



@dataclass(frozen=True)
class Harness:
    name: str
    seeds: Callable[[], list[bytes]]
    check: Callable[[bytes], None]
    modules: tuple[str, ...]


def codec_error_type() -> type[BaseException]:
    from firmware_bridge.errors import ProtocolError

    return ProtocolError


def check(cond: bool, what: str) -> None:
    if not cond:
        raise InvariantViolation(what)


def chunks(data: bytes, selector: int) -> Iterator[bytes]:
    """Split ``data`` the way a transport might deliver it; ``selector`` picks the pattern."""
    mode = selector % 4
    if mode == 0 or len(data) <= 1:
        if data:
            yield data
        return
    if mode == 1:
        for i in range(len(data)):
            yield data[i:i + 1]
        return
    rng = random.Random(selector)
    i = 0
    while i < len(data):
        n = rng.randint(1, 64 if mode == 2 else 400)
        yield data[i:i + n]
        i += n


def fit(data: bytes, size: int) -> bytes:
    """Pad or cut to exactly ``size`` bytes, so random inputs also reach the deep paths."""
    return (data + bytes(size))[:size]

