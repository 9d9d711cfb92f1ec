"""Regression tests for what bench/fuzz.py found: each one failed before its fix."""

from __future__ import annotations

import pytest

from firmware_bridge import r30x
from firmware_bridge.errors import LocalProtocolError


@pytest.mark.parametrize(("width", "height", "size"), [(1, 2, 1), (3, 2, 3), (0, 5, 0), (4, -2, 0)])
def test_r30x_unpack_image_rejects_an_impossible_geometry_with_a_codec_error(width: int, height: int,
                                                                             size: int) -> None:
    # before: numpy's reshape raised ValueError("cannot reshape array of size 1 into shape (2,0)")
    with pytest.raises(LocalProtocolError, match="even width"):
        r30x.unpack_image(bytes(size), width=width, height=height)


def test_r30x_unpack_image_still_unpacks_a_small_even_image() -> None:
    out = r30x.unpack_image(b"\x12\xf0", width=4, height=1)
    assert out.tolist() == [[17, 34, 255, 0]]
