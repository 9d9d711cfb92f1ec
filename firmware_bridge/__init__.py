"""The byte level: sans-IO protocol codecs and transports opened by URL.

Codecs here import nothing from serial, usb, socket, asyncio, threading or
time: bytes in, events out (the h11 model). Transports turn a URL
(``/dev/ttyUSB0``, ``socket://…``, ``usbip://…``, ``usb://VID:PID``) into
something a driver can read and write.
"""
