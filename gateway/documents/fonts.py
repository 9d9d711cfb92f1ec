"""The CJK fonts documents are set in: Noto Serif/Sans CJK SC from Debian's ``fonts-noto-cjk``.

Why these: they cover GB 18030's common hanzi, their licence (OFL) allows embedding, and Debian ships them
as OpenType collections (.ttc) that fpdf2 embeds as subsets (only the glyphs a document uses: a page of
Chinese adds tens of kilobytes, not the 20 MB collection). The simplified-Chinese face is found by its name
in the collection, not by a position that could change between font releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["CjkFont", "FONT_DIRS", "find_font"]

FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/noto-cjk"), Path("/usr/local/share/fonts"))


@dataclass(frozen=True)
class CjkFont:
    path: Path
    face_index: int  # the SC face inside the collection


@cache
def find_font(style: str = "Serif", weight: str = "Regular") -> CjkFont:
    """Noto ``style`` CJK SC ``weight`` (e.g. Serif Regular), or a ConfigError saying what to install."""
    from fontTools.ttLib import TTCollection

    name = f"Noto{style}CJK-{weight}.ttc"
    for directory in FONT_DIRS:
        path = directory / name
        if path.is_file():
            collection = TTCollection(str(path), lazy=True)
            try:
                for index, face in enumerate(collection.fonts):
                    if face["name"].getDebugName(4) == f"Noto {style} CJK SC":
                        return CjkFont(path, index)
            finally:
                collection.close()
            raise ConfigError(f"{path} has no simplified-Chinese (SC) face", "reinstall the fonts-noto-cjk package")
    raise ConfigError(f"the Chinese font {name} is not installed (looked in {', '.join(map(str, FONT_DIRS))})",
                      "install it: apt-get install fonts-noto-cjk")
