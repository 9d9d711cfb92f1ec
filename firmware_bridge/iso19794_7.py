"""ISO/IEC 19794-7:2007 ("full format") signature time-series records, encoder only.

Layout written here (all integers big-endian)::

    +------------+------------+-----------------+------------------------+----------+---------------+---------+
    | "SDI\\0"    | " 10\\0"    | inclusion mask  | channel descriptions   | reserved | sample count  | samples |
    | 53 44 49 00| 20 31 30 00| u16, MSB first  | per included channel   |   00     | u32 (or u24)  |  N × …  |
    +------------+------------+-----------------+------------------------+----------+---------------+---------+

    inclusion mask bits, MSB first: X Y Z VX VY AX AY T DT F S TX TY Az El R
    channel description: preamble u8 (MSB first: scaling, min, max, mean,
    std-dev, constant, linear-component-removed, reserved) followed by the
    attributes it announces: scaling u16, then min / max / mean / std u16.
    scaling u16 = 5-bit exponent E | 11-bit fraction F,
    value = 2^(E-16) · (1 + F/2048) units per mm (per second for T).
    sample = one u16 per included channel, in mask order.

What is confirmed and what is assumed (docs/protocols/signpad-stu.md §6;
H = from the standard, M = from one real exported record, L = our reading):

* H — magic "SDI\\0", version " 10\\0", the channel order of the inclusion
  mask and which channels are signed, the channel-description preamble
  and attribute order, the scaling formula (``B4 80`` = 100 units/mm,
  ``E9 C4`` = 10000 per second).
* M — as in Wacom's own export: X and Y stored with a +32768 offset (the
  signed channels in offset binary), T in units of 1/10000 s counted from
  the first sample, X/Y descriptions carry scaling + min + max (preamble
  0xE0), T scaling only (0x80), F min + max (0x60).
* L — the sample count field: Wacom's export shows ``00 | 00 00 00 EA``
  after the last description, which we read as the reserved byte then a
  4-byte count. The ASN.1 limit (16,777,215) suggests 3 bytes, so the width
  is a parameter (``count_bytes``, default 4 = what the only real record we
  have shows). Whether X/Y min/max are stored offset like the samples is
  not confirmed; we store them offset, so they compare with the samples.
* Not implemented — the 2014 edition (version "020"), its XML encoding, the
  compact format, extended data.

T is a u16: at 10000 units/s a record covers 6.55 s. ``encode`` refuses a
series that does not fit (LocalProtocolError) instead of wrapping silently;
callers with longer signatures pass ``t_units_per_second=1000`` (65.5 s).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_bridge.errors import FrameError, LengthError, LocalProtocolError

__all__ = [
    "MAGIC", "VERSION_2007", "CHANNEL_BITS", "SIGNED_CHANNELS",
    "encode_scaling", "decode_scaling", "channel_mask", "SignatureTimeSeries", "encode_record",
    "ChannelDescription", "DecodedRecord", "decode_record",
]

MAGIC = b"SDI\x00"
VERSION_2007 = b" 10\x00"

CHANNEL_ORDER = ("X", "Y", "Z", "VX", "VY", "AX", "AY", "T", "DT", "F", "S", "TX", "TY", "Az", "El", "R")
CHANNEL_BITS: dict[str, int] = {name: 0x8000 >> i for i, name in enumerate(CHANNEL_ORDER)}
SIGNED_CHANNELS = frozenset({"X", "Y", "VX", "VY", "AX", "AY", "TX", "TY"})

PRE_SCALING, PRE_MIN, PRE_MAX, PRE_MEAN, PRE_STD = 0x80, 0x40, 0x20, 0x10, 0x08
PRE_CONSTANT, PRE_LINEAR_REMOVED = 0x04, 0x02


def channel_mask(channels: Sequence[str]) -> int:
    """The 16-bit inclusion mask for a set of channel names (X and Y are mandatory)."""
    unknown = [c for c in channels if c not in CHANNEL_BITS]
    if unknown:
        raise LocalProtocolError(f"unknown channel(s) {unknown}; known: {', '.join(CHANNEL_ORDER)}")
    if "X" not in channels or "Y" not in channels:
        raise LocalProtocolError("ISO/IEC 19794-7 requires the X and Y channels")
    mask = 0
    for c in channels:
        mask |= CHANNEL_BITS[c]
    return mask


def encode_scaling(value: float) -> int:
    """Units per mm (per s for T) → the u16 scaling code, nearest representable value."""
    if not value > 0 or not math.isfinite(value):
        raise LocalProtocolError(f"scaling {value} must be a positive number")
    exponent = math.floor(math.log2(value))
    fraction = round((value / 2.0 ** exponent - 1.0) * 2048)
    if fraction == 2048:
        exponent, fraction = exponent + 1, 0
    e = exponent + 16
    if not 0 <= e <= 31:
        raise LocalProtocolError(f"scaling {value} is outside the range 2^-16 … 2^15")
    return e << 11 | fraction


def decode_scaling(code: int) -> float:
    return float(2.0 ** ((code >> 11) - 16) * (1 + (code & 0x7FF) / 2048))


@dataclass(frozen=True)
class SignatureTimeSeries:
    """Samples in device units: t in ms from any origin, x/y tablet units, f pressure levels."""

    t_ms: Sequence[float]
    x: Sequence[int]
    y: Sequence[int]
    f: Sequence[int]
    xy_units_per_mm: float  # e.g. 2540 lpi / 25.4 = 100
    f_max: int  # the pad's maximum pressure level (F channel max)


def _u16(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{name} value {value} does not fit the 16-bit ISO 19794-7 field")
    return value


def encode_record(series: SignatureTimeSeries, *, t_units_per_second: int = 10000, count_bytes: int = 4) -> bytes:
    """Channels X, Y, T, F (mask 0xC140) → record bytes. See the module docstring for the layout."""
    n = len(series.t_ms)
    if not (len(series.x) == len(series.y) == len(series.f) == n):
        raise LocalProtocolError("t_ms, x, y and f must have the same number of samples")
    if n == 0:
        raise LocalProtocolError("a signature record needs at least one sample")
    if count_bytes not in (3, 4) or n >= 1 << (8 * count_bytes):
        raise LocalProtocolError(f"{n} samples do not fit a {count_bytes}-byte count (3 or 4 bytes)")
    t0 = series.t_ms[0]
    t_units = [round((t - t0) * t_units_per_second / 1000.0) for t in series.t_ms]
    if any(b < a for a, b in zip(t_units, t_units[1:])):
        raise LocalProtocolError("sample times must not go backwards")
    if t_units[-1] > 0xFFFF:
        raise LocalProtocolError(
            f"the signature lasts {(series.t_ms[-1] - t0) / 1000:.2f} s, more than a 16-bit T channel holds at "
            f"{t_units_per_second} units/s; pass a smaller t_units_per_second")
    xs = [_u16("X", v + 32768) for v in series.x]
    ys = [_u16("Y", v + 32768) for v in series.y]
    fs = [_u16("F", v) for v in series.f]

    out = bytearray(MAGIC + VERSION_2007)
    out += struct.pack(">H", channel_mask(("X", "Y", "T", "F")))
    xy_scale = encode_scaling(series.xy_units_per_mm)
    out += struct.pack(">BHHH", PRE_SCALING | PRE_MIN | PRE_MAX, xy_scale, min(xs), max(xs))
    out += struct.pack(">BHHH", PRE_SCALING | PRE_MIN | PRE_MAX, xy_scale, min(ys), max(ys))
    out += struct.pack(">BH", PRE_SCALING, encode_scaling(t_units_per_second))
    out += struct.pack(">BHH", PRE_MIN | PRE_MAX, 0, _u16("F max", series.f_max))
    out += b"\x00"  # reserved
    out += n.to_bytes(count_bytes, "big")
    for i in range(n):
        out += struct.pack(">HHHH", xs[i], ys[i], t_units[i], fs[i])
    return bytes(out)


# ---- decoding (for verification and tests) ----------------------------------------------

@dataclass(frozen=True)
class ChannelDescription:
    name: str
    scaling: float | None
    minimum: int | None
    maximum: int | None
    mean: int | None
    std_dev: int | None
    constant: bool
    linear_component_removed: bool


@dataclass(frozen=True)
class DecodedRecord:
    """A parsed record: channel descriptions in mask order and raw sample values (offsets kept)."""

    mask: int
    channels: tuple[ChannelDescription, ...]
    samples: tuple[tuple[int, ...], ...]

    def column(self, name: str) -> list[int]:
        """One channel's raw values; signed channels still carry the +32768 offset."""
        names = [c.name for c in self.channels]
        if name not in names:
            raise KeyError(f"channel {name} is not in this record (has {', '.join(names)})")
        i = names.index(name)
        return [row[i] for row in self.samples]


def _sample_width(name: str) -> int:
    return 1 if name == "S" else 2  # the pen-switch channel is one byte in Wacom's export (M)


def decode_record(raw: bytes, *, count_bytes: int = 4) -> DecodedRecord:
    """Parse a 2007-format record as ``encode_record`` writes it. Raises ProtocolError subclasses."""
    raw = bytes(raw)
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(raw):
            raise LengthError(f"record truncated in {what}: needs {pos + n} bytes, has {len(raw)}")
        chunk = raw[pos:pos + n]
        pos += n
        return chunk

    if take(4, "magic") != MAGIC:
        raise FrameError("not an ISO/IEC 19794-7 record: it does not start with 'SDI\\0'")
    version = take(4, "version")
    if version != VERSION_2007:
        raise FrameError(f"record version {version!r} is not the 2007 edition ' 10\\0'")
    mask = int.from_bytes(take(2, "inclusion mask"), "big")
    if mask & 0xC000 != 0xC000:
        raise FrameError(f"inclusion mask 0x{mask:04x} lacks the mandatory X and Y channels")
    channels = []
    for name in CHANNEL_ORDER:
        if not mask & CHANNEL_BITS[name]:
            continue
        pre = take(1, f"{name} preamble")[0]
        if pre & 0x01:
            raise FrameError(f"{name} preamble 0x{pre:02x} sets the reserved bit")

        def field(bit: int, what: str) -> int | None:
            return int.from_bytes(take(2, f"{name} {what}"), "big") if pre & bit else None

        scale_code = field(PRE_SCALING, "scaling")
        channels.append(ChannelDescription(
            name=name, scaling=decode_scaling(scale_code) if scale_code is not None else None,
            minimum=field(PRE_MIN, "minimum"), maximum=field(PRE_MAX, "maximum"), mean=field(PRE_MEAN, "mean"),
            std_dev=field(PRE_STD, "standard deviation"), constant=bool(pre & PRE_CONSTANT),
            linear_component_removed=bool(pre & PRE_LINEAR_REMOVED),
        ))
    if take(1, "reserved byte") != b"\x00":
        raise FrameError("the reserved byte after the channel descriptions is not 0")
    count = int.from_bytes(take(count_bytes, "sample count"), "big")
    widths = [_sample_width(c.name) for c in channels]
    size = sum(widths)
    if len(raw) - pos != count * size:
        raise LengthError(f"record announces {count} samples of {size} bytes but holds {len(raw) - pos} bytes")
    samples = []
    for _ in range(count):
        row = []
        for w in widths:
            row.append(int.from_bytes(raw[pos:pos + w], "big"))
            pos += w
        samples.append(tuple(row))
    return DecodedRecord(mask, tuple(channels), tuple(samples))
