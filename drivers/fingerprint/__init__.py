"""Driver for R30x-family UART fingerprint readers (ZFM-20, R307, R503, AS608).

Why this shape: the gateway needs three things from a fingerprint reader —
a finger image good enough to keep as evidence (with a quality score and a
prompt to press again), the identity of an enrolled officer (search in the
module's own template library), and clear errors when the reader is
missing, locked by a password or simply not touched. Everything else
(evidence storage, signing) happens above this layer.

The link is any pyserial URL (``/dev/ttyUSB0``, ``socket://127.0.0.1:7001``,
a simulator's pty path); the bytes are framed by
:mod:`firmware_bridge.r30x`.

Usage::

    with FingerprintReader("/dev/ttyUSB0", password=0) as reader:
        capture = reader.capture(timeout=15)          # FingerCapture or PoorQualityError
        capture.save_png("finger.png")
        result = reader.search(timeout=15)            # SearchResult(page, score)

Errors::

    DriverError                         (drivers.errors)
    └── FingerprintError
        ├── DeviceGoneError             the port cannot be opened, vanished or was closed
        ├── DeviceNotRespondingError    silence after retries (wrong baud, address, not a module)
        ├── PacketError                 garbled packets kept coming after retries (line noise)
        ├── WrongPasswordError          the module refused the password / wants one
        ├── NoFingerError               no finger within the timeout (also a TimeoutError)
        ├── PoorQualityError            image quality below the threshold: press again
        ├── EnrollmentError             the presses did not match, or the library is full
        ├── ImageEncodingError          PNG / ISO record could not be produced
        ├── CaptureCancelled            the caller's cancel event was set while waiting
        └── ModuleError                 any other confirmation code; ``.code`` says which

Modules: ``reader`` (the serial driver), ``image`` (quality score, PNG), ``iso``
(ISO/IEC 19794-4 records), ``results`` (captures, search results, enrolments), ``errors``.
"""

from .errors import (
    CaptureCancelled,
    DeviceGoneError,
    DeviceNotRespondingError,
    EnrollmentError,
    FingerprintError,
    ImageEncodingError,
    ModuleError,
    NoFingerError,
    PacketError,
    PoorQualityError,
    WrongPasswordError,
)
from .image import encode_png, quality_score, save_png
from .iso import IsoFingerImage, iso_19794_4_record, parse_iso_19794_4
from .reader import DEFAULT_QUALITY_THRESHOLD, FingerprintReader
from .results import Enrollment, FingerCapture, SearchResult

__all__ = [
    "FingerprintReader",
    "FingerCapture",
    "SearchResult",
    "Enrollment",
    "IsoFingerImage",
    "quality_score",
    "encode_png",
    "save_png",
    "iso_19794_4_record",
    "parse_iso_19794_4",
    "DEFAULT_QUALITY_THRESHOLD",
    "FingerprintError",
    "DeviceGoneError",
    "DeviceNotRespondingError",
    "PacketError",
    "WrongPasswordError",
    "NoFingerError",
    "PoorQualityError",
    "EnrollmentError",
    "ImageEncodingError",
    "CaptureCancelled",
    "ModuleError",
]
