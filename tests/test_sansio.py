"""Every codec in firmware_bridge answers "no event yet" with the one ``sansio.NEED_DATA``.

Why: before, five codecs each defined their own sentinel, so ``event is
NEED_DATA`` was only right against the codec's own module; a loop written
against one codec and reused with another never saw "need data" and spun or
fed the sentinel on as an event.
"""

from __future__ import annotations

import copy
import pickle

import pytest

from firmware_bridge import astm, bot, r30x, sansio, stu_hid, usbip
from firmware_bridge.astm import AstmReceiver
from firmware_bridge.bot import BotDeviceParser
from firmware_bridge.r30x import R30xCodec
from firmware_bridge.stu_hid import PenReportDecoder
from firmware_bridge.usbip import Role, UsbIpConnection


@pytest.mark.parametrize("module", [astm, bot, r30x, stu_hid, usbip], ids=lambda m: m.__name__)
def test_every_codec_module_exports_the_shared_sentinel(module: object) -> None:
    assert getattr(module, "NEED_DATA") is sansio.NEED_DATA
    assert getattr(module, "NeedData") is sansio.NeedData


@pytest.mark.parametrize("codec", [
    AstmReceiver(), BotDeviceParser(), R30xCodec(), PenReportDecoder(), UsbIpConnection(Role.SERVER),
], ids=lambda c: type(c).__name__)
def test_an_empty_codec_returns_the_shared_sentinel(codec: sansio.Decoder[object] | AstmReceiver) -> None:
    assert codec.next_event() is sansio.NEED_DATA


def test_the_sentinel_stays_one_object_through_copy_and_pickle() -> None:
    assert sansio.NeedData() is sansio.NEED_DATA
    assert copy.deepcopy(sansio.NEED_DATA) is sansio.NEED_DATA
    assert pickle.loads(pickle.dumps(sansio.NEED_DATA)) is sansio.NEED_DATA
    assert repr(sansio.NEED_DATA) == "NEED_DATA"
