"""The fingerprint module itself, without any I/O: bytes from the host in, reply packets out.

Why separate from the server: the module's behaviour (password gate, image
buffer, char buffers, template library, bulk transfers) is what tests and
integrators care about; pacing, ptys and sockets are the server's business.

State machine, per command packet::

    idle ──Command──► (password gate) ──► handler ──► Ack [+ data packets]
      ▲                                     │
      │      DownChar / DownImage (cc 00)   ▼
      └────── receiving data packets ◄── expecting host data until pid 08

A packet that fails the codec's checks is answered with confirmation code
01 (packet receive error), as the modules do. Packets for another address
are line noise to this module: it stays silent.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from firmware_bridge.errors import ProtocolError
from firmware_bridge.r30x import (
    DEFAULT_ADDRESS,
    IMAGE_BYTES,
    NEED_DATA,
    PACKET_SIZES,
    TEMPLATE_BYTES,
    Ack,
    Command,
    ConfirmationCode as CC,
    DataPacket,
    Instruction as Ins,
    R30xCodec,
    Role,
    SystemParameters,
    pack_image,
    split_data,
    unpack_image,
)

from simulators.fingerprint.images import (
    MATCH_THRESHOLD,
    extract_template,
    match_score,
    merge_templates,
    render_press,
)

__all__ = ["Press", "FingerprintModule"]


@dataclass(frozen=True)
class Press:
    """A finger on the glass: which finger, how well pressed, and which placement."""

    finger_id: int
    quality: float
    press_no: int


@dataclass
class _Download:
    """Host→module bulk transfer in progress (after DownChar / DownImage was acknowledged)."""

    target: str  # "char" | "image"
    buffer_id: int
    data: bytearray = field(default_factory=bytearray)


class FingerprintModule:
    """An R307/ZFM-20-like module: a template library, two char buffers and an image buffer.

    ``finger`` is asked at every GenImg what lies on the sensor (None: nothing).
    """

    FIRMWARE = b"EGW-SIM R30x 1.0"
    ALGORITHM = b"EGW-SIM ridge-flow+ridge-map v2"

    def __init__(
        self,
        finger: Callable[[], Press | None],
        *,
        address: int = DEFAULT_ADDRESS,
        password: int = 0,
        library_size: int = 200,
        packet_size: int = 128,
        baud_n: int = 6,
        security_level: int = 3,
        lenient_checksum: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if packet_size not in PACKET_SIZES:
            raise ValueError(f"packet size {packet_size} is not one of {PACKET_SIZES}")
        self._finger = finger
        self.address = address
        self.password = password
        self.library_size = library_size
        self.packet_size = packet_size
        self.baud_n = baud_n
        self.security_level = security_level
        self.codec = R30xCodec(Role.MODULE, address, lenient_checksum=lenient_checksum)
        self.rng = rng or random.Random()
        self.library: dict[int, bytes] = {}
        self.notepad = [bytes(32) for _ in range(16)]
        self.char_buffers: dict[int, bytes | None] = {1: None, 2: None}
        self.image: npt.NDArray[np.uint8] | None = None
        self.verified = password == 0
        self.match_flag = False
        self._download: _Download | None = None
        self._last_press: Press | None = None
        self._press_image: npt.NDArray[np.uint8] | None = None
        # faults requested by tests: answer the next commands with this code, or not at all
        self.injected: list[CC] = []
        self.silent_commands = 0
        self.commands_seen: deque[Ins] = deque(maxlen=10_000)  # recent commands, for tests

    # -- wire -----------------------------------------------------------
    def power_cycle(self) -> None:
        """What a power cut forgets: buffers, verification, half-done transfers (not the library)."""
        self.codec.clear()
        self.char_buffers = {1: None, 2: None}
        self.image = None
        self.verified = self.password == 0
        self.match_flag = False
        self._download = None

    def receive(self, data: bytes) -> list[bytes]:
        """Feed bytes from the host; return the packets to send back, each as its own write."""
        self.codec.receive_data(data)
        out: list[bytes] = []
        while True:
            try:
                event = self.codec.next_event()
            except ProtocolError:
                self._download = None
                out.append(self._ack(CC.PACKET_RECEIVE_ERROR))
                continue
            if event is NEED_DATA:
                return out
            if isinstance(event, DataPacket):
                out.extend(self._on_data(event))
            elif isinstance(event, Command):
                out.extend(self._on_command(event))

    def _ack(self, code: CC, data: bytes = b"") -> bytes:
        return self.codec.send(Ack(code, data, self.address))

    def _data(self, payload: bytes) -> list[bytes]:
        return [self.codec.send(DataPacket(p.data, p.final, self.address)) for p in split_data(payload, self.packet_size)]

    def _on_data(self, packet: DataPacket) -> list[bytes]:
        dl = self._download
        if dl is None:
            return []  # a data packet nobody asked for: real modules ignore it
        dl.data += packet.data
        limit = TEMPLATE_BYTES if dl.target == "char" else IMAGE_BYTES
        if len(dl.data) > limit:
            self._download = None
            return [self._ack(CC.CANNOT_RECEIVE_DATA)]
        if not packet.final:
            return []
        self._download = None
        if dl.target == "char":
            self.char_buffers[dl.buffer_id] = bytes(dl.data).ljust(TEMPLATE_BYTES, b"\0")
        elif len(dl.data) == IMAGE_BYTES:
            self.image = unpack_image(bytes(dl.data))
        return []

    # -- commands -------------------------------------------------------
    def _on_command(self, cmd: Command) -> list[bytes]:
        self._download = None
        self.commands_seen.append(cmd.instruction)
        if self.silent_commands > 0:
            self.silent_commands -= 1
            return []
        if self.injected:
            return [self._ack(self.injected.pop(0))]
        if not self.verified and cmd.instruction not in (Ins.VFY_PWD, Ins.HANDSHAKE, Ins.GET_ECHO):
            return [self._ack(CC.PASSWORD_NOT_VERIFIED)]
        handler = getattr(self, "_cmd_" + cmd.instruction.name.lower(), None)
        if handler is None:
            return [self._ack(CC.PACKET_RECEIVE_ERROR)]
        try:
            result: list[bytes] = handler(cmd.params)
        except (IndexError, ValueError):
            # parameters too short / malformed: the module reports a receive error
            return [self._ack(CC.PACKET_RECEIVE_ERROR)]
        return result

    @staticmethod
    def _u16(params: bytes, offset: int) -> int:
        if len(params) < offset + 2:
            raise IndexError("parameter missing")
        return int.from_bytes(params[offset:offset + 2], "big")

    def _buffer_id(self, params: bytes) -> int:
        if not params or params[0] not in self.char_buffers:
            raise ValueError("buffer id must be 1 or 2")
        return params[0]

    def _cmd_vfy_pwd(self, params: bytes) -> list[bytes]:
        if len(params) != 4:
            raise ValueError("password is 4 bytes")
        if int.from_bytes(params, "big") == self.password:
            self.verified = True
            return [self._ack(CC.OK)]
        self.verified = self.password == 0 and self.verified
        return [self._ack(CC.WRONG_PASSWORD)]

    def _cmd_set_pwd(self, params: bytes) -> list[bytes]:
        if len(params) != 4:
            raise ValueError("password is 4 bytes")
        self.password = int.from_bytes(params, "big")
        return [self._ack(CC.OK)]

    def _cmd_set_adder(self, params: bytes) -> list[bytes]:
        if len(params) != 4:
            raise ValueError("address is 4 bytes")
        self.address = int.from_bytes(params, "big")
        self.codec.address = self.address
        return [self._ack(CC.OK)]  # the ack already carries the new address

    def _cmd_handshake(self, params: bytes) -> list[bytes]:
        return [self._ack(CC.OK)]

    _cmd_get_echo = _cmd_handshake
    _cmd_check_sensor = _cmd_handshake
    _cmd_aura_led_config = _cmd_handshake

    def _cmd_soft_rst(self, params: bytes) -> list[bytes]:
        reply = self._ack(CC.OK)
        self.power_cycle()
        return [reply, b"\x55"]  # the R503's "ready" byte after reset

    def _cmd_get_alg_ver(self, params: bytes) -> list[bytes]:
        return [self._ack(CC.OK, self.ALGORITHM.ljust(32, b"\0")[:32])]

    def _cmd_get_fw_ver(self, params: bytes) -> list[bytes]:
        return [self._ack(CC.OK, self.FIRMWARE.ljust(32, b"\0")[:32])]

    def system_parameters(self) -> SystemParameters:
        status = (0x2 if self.match_flag else 0) | (0x4 if self.verified else 0) | (0x8 if self.image is not None else 0)
        return SystemParameters(
            status=status,
            system_id=0x0009,
            library_size=self.library_size,
            security_level=self.security_level,
            address=self.address,
            packet_size_code=PACKET_SIZES.index(self.packet_size),
            baud_n=self.baud_n,
        )

    def _cmd_read_sys_para(self, params: bytes) -> list[bytes]:
        return [self._ack(CC.OK, self.system_parameters().to_bytes())]

    def _cmd_set_sys_para(self, params: bytes) -> list[bytes]:
        if len(params) != 2:
            raise ValueError("SetSysPara takes ParamNo and Value")
        number, value = params
        if number == 4 and 1 <= value <= 12:
            self.baud_n = value
        elif number == 5 and 1 <= value <= 5:
            self.security_level = value
        elif number == 6 and 0 <= value <= 3:
            self.packet_size = PACKET_SIZES[value]
        else:
            return [self._ack(CC.INVALID_REGISTER)]
        return [self._ack(CC.OK)]

    def _cmd_get_random_code(self, params: bytes) -> list[bytes]:
        return [self._ack(CC.OK, self.rng.getrandbits(32).to_bytes(4, "big"))]

    def _cmd_read_inf_page(self, params: bytes) -> list[bytes]:
        page = (self.FIRMWARE + b"\0" + self.system_parameters().to_bytes()).ljust(512, b"\xff")
        return [self._ack(CC.OK), *self._data(page)]

    def _cmd_write_notepad(self, params: bytes) -> list[bytes]:
        if len(params) != 33 or params[0] > 15:
            raise ValueError("WriteNotepad takes a page 0..15 and 32 bytes")
        self.notepad[params[0]] = bytes(params[1:])
        return [self._ack(CC.OK)]

    def _cmd_read_notepad(self, params: bytes) -> list[bytes]:
        if len(params) != 1 or params[0] > 15:
            raise ValueError("ReadNotepad takes a page 0..15")
        return [self._ack(CC.OK, self.notepad[params[0]])]

    # image acquisition
    def _cmd_gen_img(self, params: bytes) -> list[bytes]:
        press = self._finger()
        if press is None:
            return [self._ack(CC.NO_FINGER)]
        if press != self._last_press or self._press_image is None:
            # a new placement; repeated GenImg while the finger stays gives the same image
            self._last_press = press
            self._press_image = render_press(press.finger_id, press.quality, press.press_no)
        self.image = self._press_image
        return [self._ack(CC.OK)]

    def _cmd_up_image(self, params: bytes) -> list[bytes]:
        if self.image is None:
            return [self._ack(CC.UP_IMAGE_FAILED)]
        return [self._ack(CC.OK), *self._data(pack_image(self.image))]

    def _cmd_down_image(self, params: bytes) -> list[bytes]:
        self._download_start("image", 0)
        return [self._ack(CC.OK)]

    def _download_start(self, target: str, buffer_id: int) -> None:
        self._download = _Download(target, buffer_id)

    def _cmd_img_2_tz(self, params: bytes) -> list[bytes]:
        buffer_id = self._buffer_id(params)
        if self.image is None:
            return [self._ack(CC.NO_VALID_PRIMARY_IMAGE)]
        template, quality = extract_template(self.image)
        if quality < 10:
            return [self._ack(CC.IMAGE_TOO_MESSY)]
        if quality < 25:
            return [self._ack(CC.TOO_FEW_FEATURE_POINTS)]
        self.char_buffers[buffer_id] = template
        return [self._ack(CC.OK)]

    def _threshold(self) -> int:
        return MATCH_THRESHOLD + (self.security_level - 3) * 20

    def _cmd_match(self, params: bytes) -> list[bytes]:
        a, b = self.char_buffers[1], self.char_buffers[2]
        score = match_score(a, b) if a is not None and b is not None else 0
        self.match_flag = score >= self._threshold()
        code = CC.OK if self.match_flag else CC.NO_MATCH
        return [self._ack(code, score.to_bytes(2, "big"))]

    def _cmd_search(self, params: bytes) -> list[bytes]:
        buffer_id = self._buffer_id(params)
        start, count = self._u16(params, 1), self._u16(params, 3)
        probe = self.char_buffers[buffer_id]
        best_page, best_score = 0, 0
        if probe is not None:
            for page in sorted(self.library):
                if start <= page < start + count:
                    score = match_score(probe, self.library[page])
                    if score > best_score:
                        best_page, best_score = page, score
        self.match_flag = best_score >= self._threshold()
        if not self.match_flag:
            return [self._ack(CC.NOT_FOUND, bytes(4))]
        return [self._ack(CC.OK, best_page.to_bytes(2, "big") + best_score.to_bytes(2, "big"))]

    _cmd_high_speed_search = _cmd_search

    def _cmd_reg_model(self, params: bytes) -> list[bytes]:
        a, b = self.char_buffers[1], self.char_buffers[2]
        if a is None or b is None or match_score(a, b) < self._threshold():
            return [self._ack(CC.MERGE_FAILED)]
        merged = merge_templates(a, b)
        self.char_buffers[1] = self.char_buffers[2] = merged
        return [self._ack(CC.OK)]

    def _cmd_store(self, params: bytes) -> list[bytes]:
        buffer_id = self._buffer_id(params)
        page = self._u16(params, 1)
        if page >= self.library_size:
            return [self._ack(CC.PAGE_ID_OUT_OF_RANGE)]
        template = self.char_buffers[buffer_id]
        if template is None:
            return [self._ack(CC.INVALID_TEMPLATE)]
        self.library[page] = template
        return [self._ack(CC.OK)]

    def _cmd_load_char(self, params: bytes) -> list[bytes]:
        buffer_id = self._buffer_id(params)
        page = self._u16(params, 1)
        if page >= self.library_size:
            return [self._ack(CC.PAGE_ID_OUT_OF_RANGE)]
        if page not in self.library:
            return [self._ack(CC.INVALID_TEMPLATE)]
        self.char_buffers[buffer_id] = self.library[page]
        return [self._ack(CC.OK)]

    def _cmd_up_char(self, params: bytes) -> list[bytes]:
        template = self.char_buffers[self._buffer_id(params)]
        if template is None:
            return [self._ack(CC.UP_CHAR_FAILED)]
        return [self._ack(CC.OK), *self._data(template)]

    def _cmd_down_char(self, params: bytes) -> list[bytes]:
        self._download_start("char", self._buffer_id(params))
        return [self._ack(CC.OK)]

    def _cmd_delet_char(self, params: bytes) -> list[bytes]:
        page, count = self._u16(params, 0), self._u16(params, 2)
        if page >= self.library_size or page + count > self.library_size:
            return [self._ack(CC.PAGE_ID_OUT_OF_RANGE)]
        for p in range(page, page + count):
            self.library.pop(p, None)
        return [self._ack(CC.OK)]

    def _cmd_empty(self, params: bytes) -> list[bytes]:
        self.library.clear()
        return [self._ack(CC.OK)]

    def _cmd_template_num(self, params: bytes) -> list[bytes]:
        return [self._ack(CC.OK, len(self.library).to_bytes(2, "big"))]

    def _cmd_read_index_table(self, params: bytes) -> list[bytes]:
        if len(params) != 1 or params[0] > 3:
            raise ValueError("index page is 0..3")
        bitmap = bytearray(32)
        base = params[0] * 256
        for page in self.library:
            if base <= page < base + 256:
                bitmap[(page - base) // 8] |= 1 << ((page - base) % 8)
        return [self._ack(CC.OK, bytes(bitmap))]

    # -- helpers for tests and the CLI ------------------------------------
    def enroll_synthetic(self, page: int, finger_id: int, quality: float = 0.9) -> None:
        """Put a template of ``finger_id`` at ``page`` as if it had been enrolled with two presses."""
        a, _ = extract_template(render_press(finger_id, quality, 1_000_001))
        b, _ = extract_template(render_press(finger_id, quality, 1_000_002))
        self.library[page] = merge_templates(a, b)
