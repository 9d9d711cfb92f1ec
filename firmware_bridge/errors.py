"""One exception tree for the byte level; drivers wrap these, never bare IndexErrors.

    BridgeError
    ├── ProtocolError             the peer sent bytes that break the protocol
    │   ├── FrameError            wrong header / framing / structure
    │   ├── ChecksumError         checksum or CRC mismatch
    │   ├── LengthError           a length beyond the protocol maximum, or truncated
    │   └── UnknownCodeError      a code the protocol does not define
    ├── LocalProtocolError        *we* were asked to send something the protocol forbids
    ├── TransportUrlError         a transport URL we cannot parse (also a ValueError)
    └── TransportError            the link itself failed
        ├── TransportClosed       the peer went away (unplugged, connection closed)
        ├── TransportTimeout      nothing arrived in time
        └── UsbError              a USB request failed
            └── UsbStall          the endpoint stalled (EPIPE)
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "ProtocolError",
    "FrameError",
    "ChecksumError",
    "LengthError",
    "UnknownCodeError",
    "LocalProtocolError",
    "TransportUrlError",
    "TransportError",
    "TransportClosed",
    "TransportTimeout",
    "UsbError",
    "UsbStall",
]


class BridgeError(Exception):
    """Base of every byte-level error."""


class ProtocolError(BridgeError):
    """The remote side violated the protocol; the message names the rule broken."""


class FrameError(ProtocolError):
    pass


class ChecksumError(ProtocolError):
    pass


class LengthError(ProtocolError):
    pass


class UnknownCodeError(ProtocolError):
    pass


class LocalProtocolError(BridgeError):
    """Our own caller asked for something the protocol forbids (a bug on our side)."""


class TransportUrlError(BridgeError, ValueError):
    """A device URL we cannot parse; the one-line message names the form expected.

    Also a ``ValueError``: a bad URL is bad input, and callers that validate
    input catch ``ValueError``."""


class TransportError(BridgeError):
    pass


class TransportClosed(TransportError):
    pass


class TransportTimeout(TransportError):
    pass


class UsbError(TransportError):
    pass


class UsbStall(UsbError):
    pass
