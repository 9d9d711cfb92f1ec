from serial.serialutil import SerialBase as SerialBase
from serial.serialutil import PortNotOpenError as PortNotOpenError
from serial.serialutil import SerialException as SerialException
from serial.serialutil import SerialTimeoutException as SerialTimeoutException

__version__: str

class Serial(SerialBase): ...

def serial_for_url(
    url: str,
    baudrate: int = ...,
    *,
    timeout: float | None = ...,
    write_timeout: float | None = ...,
    do_not_open: bool = ...,
) -> SerialBase: ...
