import socket

from serial.serialutil import SerialBase

class Serial(SerialBase):
    _socket: socket.socket | None
