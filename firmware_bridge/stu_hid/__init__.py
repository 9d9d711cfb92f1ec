"""Wacom STU signature pads: the USB HID reports, sans-IO (bytes in, events out).

An STU pad is a plain HID device: pen samples arrive as *input reports* on
the interrupt IN endpoint, everything else is a *feature report* moved by
HID GET_REPORT / SET_REPORT control transfers (wValue = 0x0300 | report id).
Every report starts with its report id byte; sizes below include it. Field
layouts follow the official SDK (``WacomGSS/STU/Protocol.hpp`` /
``Protocol.cpp``), see docs/protocols/signpad-stu.md. Confidence H (read
from the SDK) unless marked M (one secondary source).

Pen data, report 0x01 (7 bytes)::

    +----+--------------------------+----------+--------+--------+
    | 01 | rdy|  sw  | pressure 11:8| pres 7:0 | x u16BE| y u16BE|
    |    | b7 |b6..b4|    b3..b0    |          |        |        |
    +----+--------------------------+----------+--------+--------+

  (pabloko's WebHID driver reads rdy/sw from bits 0/1; that is wrong, the
  SDK's layout above is used.)

PenDataOption 0x30 (9 bytes) = PenData fields + option u16 BE (timeCount in
mode 1, sequence in mode 2). PenDataTimeCountSequence 0x34 (11 bytes) =
PenData fields + timeCount u16 BE (1 ms tick, wraps) + sequence u16 BE.

Feature reports (id, then payload)::

    03 Status         statusCode u8 | lastResultCode u8 | statusWord u16 LE    (5)
    04 Reset          resetFlag u8 (0 soft, 1 hard)                           (2)
    08 Information    modelName 9 chars | fwMajor | fwMinor | secureIc |
                      secureIcVersion[4]                                      (17)
    09 Capability     maxX | maxY | maxPressure | screenW | screenH (u16 BE) |
                      maxReportRate u8 | resolution u16 BE | encodingFlag u8 |
                      2 reserved                                              (17)
    0B Uid2           10 ASCII chars                                          (11)
    15 StartCapture   sessionId u32 BE                                        (5)
    16 EndCapture     00                                                      (2)
    20 ClearScreen    00                                                      (2)
    21 InkingMode     mode u8 (0 off, 1 on)                                   (2)
    25 StartImageData encodingMode u8                                         (2)
    26 ImageDataBlock length u16 LE | 253 data bytes (zero padded)            (256)
    27 EndImageData   flag u8 (0 commit, 1 abandon)                           (2)
    32 PenDataOptionMode mode u8 (0 none, 1 timeCount, 2 sequence, 3 both)    (2)

Byte order: Capability / Uid / StartCapture / pen data are big-endian in
the SDK; Status' statusWord and ImageDataBlock's length are little-endian
(both as the SDK's Protocol.cpp writes them).

Image encodings (encodingMode of StartImageData; SDK ``EncodingMode``):
0x00 1-bit, 0x01 1-bit zlib, 0x02 16-bit RGB565, 0x04 24-bit, +0x10 = bulk
endpoint. ``flatten_image`` / ``unflatten_image`` implement 0x00, 0x02, 0x04:

* 24-bit: B, G, R per pixel, rows top to bottom (pabloko's driver names the
  STU-540 format "24BGR"; M).
* 16-bit: RGB565 per pixel, high byte first (the SDK's flattenColor16 swaps
  to that order; H).
* 1-bit: rows of ceil(width / 8) bytes, MSB = leftmost pixel, bit set =
  white, cleared = dark (the SDK's flattenMonochrome clears bits for dark
  pixels; M for the polarity).

The Capability's encodingFlag says which the pad accepts: 0x01 zlib, 0x02
1-bit, 0x04 16-bit, 0x08 24-bit.

Layout: ``constants`` (report ids, sizes, codes), ``pen`` (input reports and
the stream decoder), ``feature`` (feature reports), ``image`` (screen image
encodings), ``fields`` (shared field checks).  Import from the package: this
``__init__`` is the public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from firmware_bridge.sansio import NEED_DATA, Decoder, NeedData
from firmware_bridge.stu_hid.constants import (
    ENCODING_FLAG_1BIT,
    ENCODING_FLAG_16BIT,
    ENCODING_FLAG_24BIT,
    ENCODING_FLAG_ZLIB,
    ENCODING_MODE_1BIT,
    ENCODING_MODE_1BIT_ZLIB,
    ENCODING_MODE_16BIT,
    ENCODING_MODE_24BIT,
    FEATURE_REPORT_IDS,
    HID_GET_REPORT,
    HID_REQ_TYPE_GET,
    HID_REQ_TYPE_SET,
    HID_SET_IDLE,
    HID_SET_REPORT,
    IMAGE_BLOCK_DATA_SIZE,
    INPUT_REPORT_IDS,
    PEN_OPTION_NONE,
    PEN_OPTION_SEQUENCE,
    PEN_OPTION_TIME_COUNT,
    PEN_OPTION_TIME_COUNT_SEQUENCE,
    REPORT_CAPABILITY,
    REPORT_CLEAR_SCREEN,
    REPORT_END_CAPTURE,
    REPORT_END_IMAGE_DATA,
    REPORT_IMAGE_DATA_BLOCK,
    REPORT_INFORMATION,
    REPORT_INKING_MODE,
    REPORT_PEN_DATA,
    REPORT_PEN_DATA_OPTION,
    REPORT_PEN_DATA_OPTION_MODE,
    REPORT_PEN_DATA_TIME_COUNT_SEQUENCE,
    REPORT_RESET,
    REPORT_SIZES,
    REPORT_START_CAPTURE,
    REPORT_START_IMAGE_DATA,
    REPORT_STATUS,
    REPORT_TYPE_FEATURE,
    REPORT_TYPE_INPUT,
    REPORT_UID2,
    RESULT_CRC,
    RESULT_GRAPHICS_IMAGE_TOO_LONG,
    RESULT_GRAPHICS_WRONG_ENCODING_TYPE,
    RESULT_GRAPHICS_WRONG_PARAMETERS,
    RESULT_GRAPHICS_ZLIB_ERROR,
    RESULT_NONE,
    RESULT_WRONG_REPORT_ID,
    RESULT_WRONG_STATE,
    STATUS_CALCULATION,
    STATUS_CAPTURE,
    STATUS_IMAGE,
    STATUS_IMAGE_BOOT,
    STATUS_READY,
    STATUS_SYSTEM_RESET,
    feature_value,
)
from firmware_bridge.stu_hid.feature import (
    Capability,
    ClearScreen,
    EndCapture,
    EndImageData,
    FeatureReport,
    ImageDataBlock,
    Information,
    InkingMode,
    PenDataOptionMode,
    Reset,
    StartCapture,
    StartImageData,
    Status,
    Uid2,
    decode_feature_report,
    encode_report,
)
from firmware_bridge.stu_hid.image import flatten_image, image_blocks, image_size, unflatten_image
from firmware_bridge.stu_hid.pen import PenData, PenDataOption, PenDataTimeCountSequence, PenReport, PenReportDecoder, decode_input_report

__all__ = [
    "NEED_DATA", "NeedData",
    "REPORT_PEN_DATA", "REPORT_STATUS", "REPORT_RESET", "REPORT_INFORMATION", "REPORT_CAPABILITY",
    "REPORT_UID2", "REPORT_START_CAPTURE", "REPORT_END_CAPTURE", "REPORT_CLEAR_SCREEN",
    "REPORT_INKING_MODE", "REPORT_START_IMAGE_DATA", "REPORT_IMAGE_DATA_BLOCK", "REPORT_END_IMAGE_DATA",
    "REPORT_PEN_DATA_OPTION", "REPORT_PEN_DATA_OPTION_MODE", "REPORT_PEN_DATA_TIME_COUNT_SEQUENCE",
    "REPORT_SIZES", "INPUT_REPORT_IDS", "FEATURE_REPORT_IDS",
    "HID_GET_REPORT", "HID_SET_REPORT", "HID_SET_IDLE", "HID_REQ_TYPE_GET", "HID_REQ_TYPE_SET",
    "REPORT_TYPE_INPUT", "REPORT_TYPE_FEATURE", "feature_value",
    "ENCODING_FLAG_ZLIB", "ENCODING_FLAG_1BIT", "ENCODING_FLAG_16BIT", "ENCODING_FLAG_24BIT",
    "ENCODING_MODE_1BIT", "ENCODING_MODE_1BIT_ZLIB", "ENCODING_MODE_16BIT", "ENCODING_MODE_24BIT",
    "STATUS_READY", "STATUS_IMAGE", "STATUS_CAPTURE", "STATUS_CALCULATION", "STATUS_IMAGE_BOOT",
    "STATUS_SYSTEM_RESET", "RESULT_NONE", "RESULT_WRONG_REPORT_ID", "RESULT_WRONG_STATE",
    "RESULT_CRC", "RESULT_GRAPHICS_WRONG_ENCODING_TYPE", "RESULT_GRAPHICS_IMAGE_TOO_LONG",
    "RESULT_GRAPHICS_ZLIB_ERROR", "RESULT_GRAPHICS_WRONG_PARAMETERS",
    "PEN_OPTION_NONE", "PEN_OPTION_TIME_COUNT", "PEN_OPTION_SEQUENCE", "PEN_OPTION_TIME_COUNT_SEQUENCE",
    "IMAGE_BLOCK_DATA_SIZE",
    "PenData", "PenDataOption", "PenDataTimeCountSequence", "PenReport",
    "Status", "Reset", "Information", "Capability", "Uid2", "StartCapture", "EndCapture",
    "ClearScreen", "InkingMode", "StartImageData", "ImageDataBlock", "EndImageData",
    "PenDataOptionMode", "FeatureReport",
    "decode_input_report", "decode_feature_report", "encode_report", "PenReportDecoder",
    "image_size", "flatten_image", "unflatten_image", "image_blocks",
]


if TYPE_CHECKING:
    def _is_a_decoder(decoder: PenReportDecoder) -> Decoder[PenReport]:
        return decoder  # mypy proves the decoder keeps the shared sans-IO shape
