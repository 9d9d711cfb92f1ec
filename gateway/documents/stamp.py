"""The seal's visible appearance: a round red stamp drawn as an image, as a Chinese official seal looks.

The unit's name runs clockwise along the upper rim, a five-pointed star sits in
the middle and the seal's purpose runs straight across beneath it (GA 241-2000
describes the physical seal this imitates). A provisional seal (the gateway's
own signature while the platform is unreachable) is drawn grey with 临时 so
nobody mistakes it for the agency's. The image carries no claim: what the seal
proves is in the signature; this is what a person sees on the page.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from gateway.errors import GatewayError

__all__ = ["draw_stamp", "cjk_font_path", "SEAL_RED", "PROVISIONAL_GREY"]

SEAL_RED = (200, 16, 30, 255)
PROVISIONAL_GREY = (110, 110, 110, 255)
SIZE_PX = 360
_FONT_CANDIDATES = (
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
)


def cjk_font_path() -> tuple[Path, int]:
    """A font with Simplified Chinese glyphs (path, index in the collection)."""
    for path, index in _FONT_CANDIDATES:
        if Path(path).exists():
            return Path(path), index
    raise GatewayError("no Chinese font found for the seal's appearance: install fonts-noto-cjk (apt-get install fonts-noto-cjk)")


def _font(size: int) -> ImageFont.FreeTypeFont:
    path, index = cjk_font_path()
    return ImageFont.truetype(str(path), size, index=index)


def _star(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, colour: tuple[int, int, int, int]) -> None:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.382
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((centre[0] + r * math.cos(angle), centre[1] + r * math.sin(angle)))
    draw.polygon(points, fill=colour)


def _arc_text(image: Image.Image, text: str, radius: float, colour: tuple[int, int, int, int]) -> None:
    """``text`` clockwise along the upper rim, each character upright towards the centre."""
    if not text:
        return
    font = _font(max(18, min(44, int(2 * math.pi * radius * 0.62 / max(len(text), 1)))))
    span = min(math.radians(250), math.radians(22) * len(text))
    centre = image.width / 2
    for i, char in enumerate(text):
        angle = -math.pi / 2 - span / 2 + (span * (i + 0.5) / len(text))
        glyph = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((32, 32), char, font=font, fill=colour, anchor="mm")
        rotated = glyph.rotate(-math.degrees(angle) - 90, resample=Image.Resampling.BICUBIC)
        x = centre + radius * math.cos(angle) - 32
        y = centre + radius * math.sin(angle) - 32
        image.alpha_composite(rotated, (int(x), int(y)))


def draw_stamp(unit_name: str, purpose: str = "电子印章", provisional: bool = False) -> Image.Image:
    """The stamp for ``unit_name`` as an RGBA image (transparent outside the seal)."""
    colour = PROVISIONAL_GREY if provisional else SEAL_RED
    image = Image.new("RGBA", (SIZE_PX, SIZE_PX), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    margin = 10
    draw.ellipse((margin, margin, SIZE_PX - margin, SIZE_PX - margin), outline=colour, width=12)
    _arc_text(image, unit_name, SIZE_PX / 2 - 58, colour)
    _star(draw, (SIZE_PX / 2, SIZE_PX / 2), 52, colour)
    label = ("临时" + purpose) if provisional else purpose
    draw.text((SIZE_PX / 2, SIZE_PX / 2 + 92), label, font=_font(34), fill=colour, anchor="mm")
    # one flat colour, the shape in the alpha channel only: the colour plane then compresses to almost nothing
    flat = Image.new("RGBA", image.size, colour)
    flat.putalpha(image.getchannel("A"))
    return flat
