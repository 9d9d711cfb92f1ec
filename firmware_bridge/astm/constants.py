"""ASTM E1381 control bytes, frame sizes, link timers and the receiver's per-message limits."""

from __future__ import annotations

from typing import Final

ENQ: Final = 0x05
ACK: Final = 0x06
NAK: Final = 0x15
EOT: Final = 0x04
STX: Final = 0x02
ETX: Final = 0x03
ETB: Final = 0x17
CR: Final = 0x0D
LF: Final = 0x0A

MAX_TEXT: Final = 240
MAX_FRAME: Final = 247
SENDER_TIMEOUT: Final = 15.0
RECEIVER_TIMEOUT: Final = 30.0
BUSY_DELAY: Final = 10.0
MAX_FAILURES: Final = 6
# Receiver limits per message (not in E1381/E1394, which set none): far above any real
# analyzer report (a 96-sample batch is ~600 records, ~60 KB) and small enough that a
# sender that never finishes a message cannot exhaust memory (4 MiB of short records
# costs ~80 MB of Python objects, hence the separate record cap).
MAX_MESSAGE: Final = 4 * 1024 * 1024
MAX_RECORDS: Final = 10_000
