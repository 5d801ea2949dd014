"""Drawing text and colour on synthetic images: fonts, fitted text, ink for a background.

Text is drawn with Pillow's built-in scalable font (`ImageFont.load_default(size=...)`) unless a
TTF file is named, so the output does not depend on the fonts a machine has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _choice(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


@lru_cache(maxsize=512)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


@dataclass(frozen=True)
class TextStyle:
    """How a piece of text is drawn: font file (None: Pillow's built-in), faux bold, width."""

    font: str | None = None
    stroke: int = 0
    stretch: float = 1.0


def _stroke(style: TextStyle, size: int) -> int:
    # Faux bold only where strokes stay open; small bold text clogs up.
    return style.stroke if size >= 18 else 0


def _text_size(text: str, size: int, style: TextStyle) -> tuple[int, int]:
    left, top, right, bottom = _font(style.font, size).getbbox(text, stroke_width=_stroke(style, size))
    return max(1, round((right - left) * style.stretch)), max(1, bottom - top)


def _fit(text: str, max_w: float, max_h: float, style: TextStyle, start: int, min_px: int) -> int | None:
    """Largest font size <= start at which `text` fits in max_w x max_h; None below min_px."""

    def fits(size: int) -> bool:
        w, h = _text_size(text, size, style)
        return w <= max_w and h <= max_h

    lo, hi = min_px, int(start)
    if hi < lo or not fits(lo):
        return None
    while lo < hi:  # text extent grows with the font size: bisect
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _draw_text(img: Image.Image, xy: tuple[float, float], text: str, size: int, fill, style: TextStyle) -> tuple[int, int, int, int]:
    """Draw `text` with its ink box's top-left at `xy`; returns the ink box."""
    font = _font(style.font, size)
    stroke = _stroke(style, size)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    if style.stretch != 1.0:
        mask = mask.resize((max(1, round(mask.width * style.stretch)), mask.height), Image.Resampling.BILINEAR)
    x, y = round(xy[0]), round(xy[1])
    img.paste(tuple(fill), (x, y, x + mask.width, y + mask.height), mask)
    return (x, y, x + mask.width, y + mask.height)


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _ink_for(bg) -> tuple[int, int, int]:
    return (20, 20, 20) if _luma(bg) > 140 else (250, 250, 245)


def _jitter(rng: np.random.Generator, rgb, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
