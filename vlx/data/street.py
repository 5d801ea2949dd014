"""The street world: storefronts whose signs a small vision tower can read, with per-patch labels.

    img, pois, labels = street_scene(rng, 224)      # labels: (5, 16, 16) glyph, field, shop, storefront, absent ids

Scenes are laid out on the tower's patch grid (`GRID` x `GRID` cells; 16 x 14 px at 224 px, the
smol tower's input): every glyph is drawn into one cell, at least one cell tall and at most one
wide, with a small per-line jitter, in high-contrast ink on its sign, so that each patch of the
tower sees at most one glyph. The renderer knows where every glyph is, which gives each cell its
labels (`LABELS`): the glyph whose centre falls in it (or none), the field its text belongs to
(name, category word, house number, street, phone, website, hours), the category of the
storefront it lies on, which storefront that is, and which of the house-number plate and the street
plaque that storefront goes without (what no cell of the sign shows). `vlx.model.tower` pre-trains the smol tower on these dense labels, and
`read_grid` turns a grid of labels (ground truth or the tower's predictions) back into text, the
tower's own transcript.

A scene is a facade seen from the kerb: an optional street-name plate (top row), one storefront
(name sign, an awning with the kind of business, a window with opening hours, phone and website
stickers and goods, a door with its house number) or two narrower ones (name, awning, door), or a
residential front without a business; pavement at the bottom. A field is in the target only when
it is drawn: text that does not fit its sign is left out of the image and of the target alike.
The businesses themselves (names, phones, websites, hours) and the language about a scene come from
`vlx.data.street_text`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vlx.data.render import TextStyle, _choice, _font, _ink_for, _jitter
from vlx.data.street_text import (AWNING_WORDS, CATEGORIES, NOUNS, PEOPLE, PREFIXES, STREET_TYPES, _business_name, _compound,
                                  _hours, _hours_lines, _phone, _website, _wrap)

GRID = 16
"""Cells per side: the tower's patch grid (224 px / 14 px patches)."""
GLYPHS = string.ascii_uppercase + string.ascii_lowercase + string.digits + "&'-.:+"
"""Glyph classes 1..len(GLYPHS); 0 is a cell without a glyph (spaces included)."""
FIELDS = ("name", "category", "house_number", "street", "phone", "website", "hours")
"""Field classes 1..len(FIELDS); 0 is a cell outside any field's text."""
LABELS = ("glyph", "field", "shop", "storefront", "absent")
ABSENT_CLASSES = 5
"""Values of the `absent` plane: 0 off any storefront; on a storefront's cells 1 + (it has no
house-number plate) + 2 * (the facade has no street plaque)."""
"""The per-cell label planes of a scene: glyph id, field id, category id + 1 of the shop, and which
storefront the cell lies on (1 the leftmost, 2 the next; 0 none)."""
MAX_STOREFRONTS = 2
"""The most storefronts a facade of the street world holds (`SHOP_COUNTS`: none, one or two)."""

GLYPH_ID = {c: i + 1 for i, c in enumerate(GLYPHS)}
FIELD_ID = {f: i + 1 for i, f in enumerate(FIELDS)}


SIGN_COLOURS = ((25, 35, 70), (20, 60, 40), (25, 25, 25), (245, 240, 225), (120, 25, 35), (110, 75, 45), (20, 100, 110), (235, 235, 235), (200, 160, 60))
WALL_COLOURS = ((200, 190, 170), (170, 90, 70), (150, 150, 150), (215, 200, 150), (180, 120, 90), (120, 130, 140), (225, 215, 200), (160, 170, 150))


RESIDENTIAL_SIGNS = ("FOR RENT", "TO LET", "SALE", "CLOSED")
GLASS = (58, 72, 88)


# --- drawing on the grid -------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _glyph_mask(font_path: str | None, size: int, char: str, stroke: int) -> tuple[Image.Image, int]:
    """The ink of one glyph as an 'L' mask and the offset of its top below the text origin."""
    font = _font(font_path, size)
    left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(mask).text((-left, -top), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    return mask, top


class _Grid:
    """An image laid out in GRID x GRID cells, with the label planes of `LABELS`."""

    def __init__(self, size: int, rng: np.random.Generator, background):
        self.img = Image.new("RGB", (size, size), background)
        self.draw = ImageDraw.Draw(self.img)
        self.rng = rng
        self.cell = size / GRID
        self.labels = np.zeros((len(LABELS), GRID, GRID), dtype=np.uint8)

    def box(self, c0: float, r0: float, c1: float, r1: float) -> tuple[float, float, float, float]:
        s = self.cell
        return (c0 * s, r0 * s, c1 * s - 1, r1 * s - 1)

    def fill(self, c0, r0, c1, r1, colour, outline=None, width: int = 1) -> None:
        self.draw.rectangle(self.box(c0, r0, c1, r1), fill=colour, outline=outline, width=width)

    def text(self, col: int, row: int, text: str, field: str | None, ink, style: TextStyle) -> None:
        """Draw `text` one glyph per cell from cell (col, row); a small jitter moves the whole line.

        Glyphs are a cell tall (cap height plus descender) and squeezed to at most 0.9 of a cell
        wide, so that a glyph's centre always falls in its own cell.
        """
        if col < 0 or col + len(text) > GRID:
            raise ValueError(f"{text!r} at column {col} does not fit the {GRID}-cell grid")
        s = self.cell
        size = max(8, round(s * 1.15))
        stroke = style.stroke if size >= 16 else 0
        font = _font(style.font, size)
        top_ref, bottom_ref = font.getbbox("H")[1], font.getbbox("g")[3]
        dx, dy = self.rng.uniform(-0.1, 0.1) * s, self.rng.uniform(-0.08, 0.08) * s
        origin_y = row * s + (s - (bottom_ref - top_ref)) / 2 - top_ref + dy
        for k, char in enumerate(text):
            c = col + k
            if field is not None:
                self.labels[1, row, c] = FIELD_ID[field]
            if char == " ":
                continue
            self.labels[0, row, c] = GLYPH_ID[char]
            mask, ink_top = _glyph_mask(style.font, size, char, stroke)
            width = min(mask.width, round(0.9 * s))
            if width != mask.width:
                mask = mask.resize((width, mask.height), Image.Resampling.BILINEAR)
            x = round((c + 0.5) * s + dx - mask.width / 2)
            y = round(origin_y + ink_top)
            self.img.paste(tuple(ink), (x, y, x + mask.width, y + mask.height), mask)

    def shop(self, c0: int, c1: int, category: str) -> None:
        """Mark columns [c0, c1) of the facade (rows 1-12) as the next storefront from the left, of `category`."""
        self.labels[2, 1:13, c0:c1] = CATEGORY_LIST.index(category) + 1
        self.labels[3, 1:13, c0:c1] = self.labels[3].max() + 1


CATEGORY_LIST = tuple(CATEGORIES)


def boundaries(storefront: np.ndarray) -> np.ndarray:
    """Cells where one storefront meets the next: (..., GRID, GRID) storefront ids -> bool, True on
    both sides of every seam between two storefronts side by side."""
    seam = (storefront[..., :, 1:] != storefront[..., :, :-1]) & (storefront[..., :, 1:] > 0) & (storefront[..., :, :-1] > 0)
    out = np.zeros(storefront.shape, dtype=bool)
    out[..., :, 1:] |= seam
    out[..., :, :-1] |= seam
    return out


def _start(rng: np.random.Generator, c0: int, c1: int, length: int) -> int:
    """Column where a line of `length` cells starts, centred in [c0, c1) give or take a cell."""
    centred = c0 + (c1 - c0 - length) // 2
    return int(np.clip(centred + rng.integers(-1, 2), c0, c1 - length))


def _contrast(rng: np.random.Generator, colours) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """A background from `colours` and a high-contrast ink for it."""
    bg = _jitter(rng, _choice(rng, colours), 10)
    return bg, _ink_for(bg)


# --- the scene -----------------------------------------------------------------------------------


@dataclass
class Business:
    """One storefront to draw; fields that do not fit their sign are cleared before drawing."""

    category: str
    name: str
    house_number: str | None
    phone: str | None
    website: str | None
    hours: list[dict]
    open_24h: bool

    def target(self, street: str | None) -> dict:
        return {
            "name": self.name,
            "category": self.category,
            "address": {"house_number": self.house_number, "street": street},
            "phone": self.phone,
            "website": self.website,
            "opening_hours": self.hours,
            "open_24h": self.open_24h,
        }


def _sample_business(rng: np.random.Generator, name_width: int, numbered: float, websites: float
                     ) -> tuple[Business, list[str]]:
    """A business whose name wraps into at most two lines of `name_width` cells, and those lines;
    `numbered`: the probability that it has a house-number plate, `websites` that it has a website."""
    category = str(_choice(rng, list(CATEGORIES)))
    for _ in range(40):
        name = _business_name(rng, category)
        lines = _wrap(name, name_width, 2)
        if lines:
            break
    else:
        name = str(_choice(rng, [p for p in PEOPLE if len(p) <= name_width]))
        lines = [name]
    open_24h = category in ("pharmacy", "grocery", "bar") and rng.random() < 0.5
    hours = [] if open_24h or rng.random() < 0.15 else _hours(rng, category)
    number = f"{int(rng.integers(1, 400 if rng.random() < 0.8 else 3000))}{_choice(rng, 'abc') if rng.random() < 0.12 else ''}"
    b = Business(category=category, name=name, house_number=number if rng.random() < numbered else None,
                 phone=_phone(rng) if rng.random() < 0.7 else None,
                 website=_website(name, rng) if rng.random() < websites else None, hours=hours, open_24h=open_24h)
    return b, lines


def _storefront(g: _Grid, b: Business, name_lines: list[str], c0: int, c1: int, style: TextStyle, full: bool) -> None:
    """Draw `b` in columns [c0, c1): name sign (rows 1-2), awning (3), door and window (4-12).

    `full`: the wide single storefront, whose window carries phone, website and opening hours;
    in a narrow one they are cleared from `b` (not drawn, not in the target).
    """
    rng = g.rng
    W = c1 - c0
    g.shop(c0, c1, b.category)
    sign, ink = _contrast(rng, SIGN_COLOURS)
    g.fill(c0, 1, c1, 3, sign)
    rows = [1, 2] if len(name_lines) == 2 else [int(rng.integers(1, 3))]
    for row, line in zip(rows, name_lines):
        g.text(_start(rng, c0 + 1, c1 - 1, len(line)), row, line, "name", ink, style)
    awning = _jitter(rng, _choice(rng, CATEGORIES[b.category][1]), 12)
    g.fill(c0, 3, c1, 4, awning)
    for k in range(c0, c1, 2):  # scallops along the awning's lower edge
        x0, _, x1, y1 = g.box(k, 3, k + 1, 4)
        g.draw.pieslice((x0, y1 - g.cell * 0.3, x1, y1 + g.cell * 0.3), 0, 180, fill=awning)
    words = [w for w in AWNING_WORDS[b.category] if len(w) <= W - 2]
    if words and rng.random() < 0.85:
        word = str(_choice(rng, words))
        g.text(_start(rng, c0 + 1, c1 - 1, len(word)), 3, word, "category", _ink_for(awning), style)
    door_left = bool(rng.random() < 0.5)
    d0 = c0 if door_left else c1 - 2
    g.fill(d0, 5, d0 + 2, 13, _jitter(rng, (80, 55, 40), 25), outline=(40, 40, 40))
    if b.house_number:
        plate, plate_ink = _contrast(rng, ((240, 240, 235), (30, 30, 30), (20, 50, 110)))
        n = len(b.house_number)
        # A cell free on the side of a neighbouring shop, so that two plates never read as one number.
        lo, hi = c0 + (c0 > 0), c1 - n - (c1 < GRID)
        start = int(np.clip(d0 + (2 - n) // 2 if door_left else d0 + 2 - n, lo, hi))
        g.fill(start, 4, start + n, 5, plate)
        g.text(start, 4, b.house_number, "house_number", plate_ink, style)
    g.labels[4, 1:13, c0:c1] = 1 + (b.house_number is None)
    w0, w1 = (c0 + 3, c1) if door_left else (c0, c1 - 3)
    g.fill(w0, 5, w1, 13, _jitter(rng, GLASS, 12), outline=(230, 230, 225))
    lines: list[tuple[str, str]] = []
    if full:
        width = w1 - w0
        if b.phone and len(b.phone) > width:
            b.phone = None
        if b.website and len(b.website) > width:  # the shop's shorter domain, as on its window
            b.website = _website(b.name, rng, width)
        hours = [(line, "hours") for h in b.hours for line in _hours_lines(h)]
        if b.open_24h:
            hours = [("OPEN 24H", "hours")]
        contact = [(t, f) for t, f in ((b.phone, "phone"), (b.website, "website")) if t]
        lines = hours + contact if rng.random() < 0.5 else contact + hours
        while len(lines) > 8 and b.hours:  # a plaque with too many lines loses its last entry
            b.hours = b.hours[:-1]
            hours = [(line, "hours") for h in b.hours for line in _hours_lines(h)]
            lines = [x for x in lines if x[1] != "hours"] + hours
    else:
        b.phone, b.website, b.hours, b.open_24h = None, None, [], False
    text_ink = (245, 245, 240)
    for k, (text, fld) in enumerate(lines):
        g.text(w0 + int(rng.integers(0, max(1, w1 - w0 - len(text) + 1))), 5 + k, text, fld, text_ink, style)
    if len(lines) <= 5:
        _goods(g.draw, rng, b.category, g.box(w0, 5 + len(lines) + 0.2, w1, 13))


def _residential(g: _Grid, style: TextStyle) -> None:
    """A front without a business: windows, a door, maybe a number or a letting sign (no POI)."""
    rng = g.rng
    for r0 in (1, 7):
        for c in range(1, GRID - 1, 5):
            g.fill(c, r0, c + 3, r0 + 4, _jitter(rng, (90, 110, 125), 20), outline=(235, 235, 235), width=2)
    d0 = int(rng.integers(1, GRID - 3))
    g.fill(d0, 8, d0 + 2, 13, _jitter(rng, (80, 50, 35), 25), outline=(40, 40, 40))
    if rng.random() < 0.5:
        number = str(int(rng.integers(1, 400)))
        g.fill(d0, 6, d0 + len(number), 7, (240, 240, 235))
        g.text(d0, 6, number, None, (30, 30, 30), style)
    if rng.random() < 0.3:
        sign = str(_choice(rng, RESIDENTIAL_SIGNS))
        c = int(rng.integers(0, GRID - len(sign) + 1))
        g.fill(c, 5, c + len(sign), 6, (250, 250, 250))
        g.text(c, 5, sign, None, (200, 30, 30), style)


def _street_name(rng: np.random.Generator) -> str:
    for _ in range(20):
        name = f"{_compound(rng) if rng.random() < 0.4 else _choice(rng, PREFIXES + NOUNS)} {_choice(rng, STREET_TYPES)}"
        if len(name) <= GRID - 2:
            return name
    return f"{_choice(rng, PREFIXES)} Way"


SHOP_COUNTS = (0.1, 0.7, 0.2)
"""The street world's shares of facades with no, one and two storefronts."""
NUMBERED = 0.85
"""The street world's share of storefronts with a house-number plate."""
WEBSITES = 0.4
"""The street world's share of businesses with a website (shown on a single storefront's window, in a
shorter form where it does not fit; two storefronts side by side have no room for one)."""


def street_scene(rng: np.random.Generator, size: int = 224, styles: tuple[TextStyle, ...] = (TextStyle(),),
                 shops: tuple[float, float, float] = SHOP_COUNTS, numbered: float = NUMBERED,
                 websites: float = WEBSITES) -> tuple[Image.Image, list[dict], np.ndarray]:
    """Render a street scene -> (image, the `POI` dicts visible in it left to right, labels).

    `shops` are the probabilities of a facade with 0, 1 and 2 storefronts (the world's own by default);
    `numbered` the probability that a storefront has a house-number plate (the world's `NUMBERED`),
    `websites` that its business has a website (the world's `WEBSITES`).

    `labels` is a uint8 array (len(LABELS), GRID, GRID): per cell the glyph id, field id, shop category
    id + 1, storefront from the left and `ABSENT_CLASSES` value (`LABELS`); cells are `size / GRID` pixels, so at 224 px each is one 14 px patch of the tower.
    """
    if size % GRID:
        raise ValueError(f"image size {size} is not a multiple of the {GRID}-cell grid; use e.g. 224 or 336")
    style = TextStyle(font=_choice(rng, styles).font, stroke=int(rng.random() < 0.3))
    wall = _jitter(rng, _choice(rng, WALL_COLOURS), 15)
    g = _Grid(size, rng, wall)
    n = int(rng.choice([0, 1, 2], p=list(shops)))
    businesses: list[Business] = []
    if n == 0:
        _residential(g, style)
    elif n == 1:
        c0, c1 = (0, GRID) if rng.random() < 0.5 else (int(rng.integers(0, 2)), GRID - int(rng.integers(0, 2)))
        b, lines = _sample_business(rng, c1 - c0 - 2, numbered, websites)
        _storefront(g, b, lines, c0, c1, style, full=True)
        businesses.append(b)
    else:
        half = GRID // 2
        for c0 in (0, half):
            # Names keep a cell free on each side, so two neighbours' texts never touch.
            b, lines = _sample_business(rng, half - 2, numbered, websites)
            _storefront(g, b, lines, c0, c0 + half, style, full=False)
            businesses.append(b)
        x = g.box(half, 0, half, 0)[0]
        g.draw.rectangle((x - 1, g.cell, x + 1, 13 * g.cell), fill=(90, 90, 90))
    street = None
    if n and rng.random() < 0.4:
        street = _street_name(rng)
        c = int(rng.integers(0, GRID - len(street) + 1))
        g.fill(c, 0, c + len(street), 1, (30, 70, 150), outline=(240, 240, 240))
        g.text(c, 0, street, "street", (245, 245, 245), style)
    else:
        g.labels[4][g.labels[4] > 0] += 2  # every storefront goes without a plaque
    g.fill(0, 13, GRID, GRID, _jitter(rng, (175, 172, 165), 12))
    g.draw.line((0, 13 * g.cell, size, 13 * g.cell), fill=(110, 110, 110), width=max(1, size // 150))
    img = _lighting(g.img, rng)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.45) * size / 224))
    return img, [b.target(street) for b in businesses], g.labels


def _street_scene(rng: np.random.Generator, S: int, styles, shops: tuple[float, float, float] = SHOP_COUNTS,
                  numbered: float = NUMBERED, websites: float = WEBSITES) -> tuple[Image.Image, list[dict]]:
    """`street_scene` without the labels: the image and its POIs (data writers)."""
    img, pois, _ = street_scene(rng, S, tuple(styles), shops, numbered, websites)
    return img, pois


SHEET_FIELDS = ("name", "category", "house_number", "street", "phone", "website", "hours")


def _sheet_text(rng: np.random.Generator, field: str) -> str:
    category = str(_choice(rng, list(CATEGORIES)))
    if field == "name":
        return str(_choice(rng, _business_name(rng, category).split(" ") + [_business_name(rng, category)]))
    if field == "category":
        return str(_choice(rng, AWNING_WORDS[category]))
    if field == "house_number":
        return f"{int(rng.integers(1, 3000))}{_choice(rng, 'abc') if rng.random() < 0.2 else ''}"
    if field == "street":
        return _street_name(rng)
    if field == "phone":
        return _phone(rng)
    if field == "website":
        return _website(_business_name(rng, category), rng, GRID - 3) or "shop.com"
    return str(_choice(rng, _hours_lines(_hours(rng, category)[0])))


def sign_sheet(rng: np.random.Generator, size: int = 224, styles: tuple[TextStyle, ...] = (TextStyle(),)
               ) -> tuple[Image.Image, np.ndarray]:
    """A text-dense warm-up image: rows of small signs with random texts of every field -> (image, labels).

    Many labelled glyphs per image (about 100, against about 40 in a street scene); no shop labels.
    """
    style = TextStyle(font=_choice(rng, styles).font, stroke=int(rng.random() < 0.3))
    g = _Grid(size, rng, _jitter(rng, _choice(rng, WALL_COLOURS), 20))
    for row in range(GRID):
        col = int(rng.integers(0, 3))
        while col < GRID - 2 and rng.random() < 0.85:
            field = str(_choice(rng, SHEET_FIELDS))
            text = _sheet_text(rng, field)[: GRID - col]
            text = text.rstrip()
            if not text:
                break
            bg, ink = _contrast(rng, SIGN_COLOURS + ((250, 250, 245), GLASS))
            g.fill(col, row, col + len(text), row + 1, bg)
            g.text(col, row, text, field, ink, style)
            col += len(text) + int(rng.integers(2, 4))
    img = _lighting(g.img, rng)
    return img, g.labels


# --- reading a grid back -------------------------------------------------------------------------


def read_grid(glyph: np.ndarray, field: np.ndarray) -> dict[str, list[str]]:
    """The text of a (GRID, GRID) grid of glyph and field ids, per field, in reading order.

    Each row is read left to right: glyph cells with at most one blank cell between them are one
    text (the blank is a space; two or more blank cells end it), and the text belongs to the field
    most of its cells are labelled with (a text of cells labelled with no field, such as a letting
    sign, is no field's). A name's second line (a name in the next row that overlaps it) continues
    it after a space. Works alike on ground-truth labels and on a tower's predictions:
    `read_grid(*labels[:2])` gives the scene's texts as drawn.
    """
    runs: list[tuple[int, int, int, int, str]] = []  # field id, row, first col, end col, text
    rows, cols = glyph.shape
    for r in range(rows):
        c = 0
        while c < cols:
            if int(glyph[r, c]) == 0:
                c += 1
                continue
            start = c
            while c < cols and (int(glyph[r, c]) > 0 or (c + 1 < cols and int(glyph[r, c + 1]) > 0)):
                c += 1
            labels = [int(x) for x in field[r, start:c] if int(x) > 0]
            if not labels:
                continue
            f = max(set(labels), key=labels.count)
            text = "".join(GLYPHS[int(g) - 1] if g else " " for g in glyph[r, start:c])
            runs.append((f, r, start, c, text))
    out: dict[str, list[str]] = {name: [] for name in FIELDS}
    used = set()
    for i, (f, r, a, b, text) in enumerate(runs):
        if i in used:
            continue
        if FIELDS[f - 1] == "name":
            for j, (f2, r2, a2, b2, text2) in enumerate(runs):
                if j not in used and j != i and f2 == f and r2 == r + 1 and a2 < b and a < b2:
                    text, used = f"{text} {text2}", used | {j}
                    break
        out[FIELDS[f - 1]].append(text)
    return out


def _goods(draw: ImageDraw.ImageDraw, rng: np.random.Generator, category: str, box: tuple[float, float, float, float]) -> None:
    """Things in the shop window, per category: a second, independent category cue."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w < 8 or h < 8:
        return
    draw.rectangle((x0, y1 - h * 0.08, x1, y1), fill=(110, 85, 60))  # shelf
    base = y1 - h * 0.08
    n = max(2, int(w / max(10.0, h * 0.45)))
    step = w / n
    for k in range(n):
        gx, gw = x0 + k * step + step * 0.15, step * 0.7
        colour = _jitter(rng, (150, 150, 150), 90)
        if category == "cafe":
            draw.rectangle((gx, base - gw * 0.7, gx + gw * 0.75, base), fill=(245, 245, 240))
            draw.ellipse((gx + gw * 0.6, base - gw * 0.55, gx + gw, base - gw * 0.2), outline=(245, 245, 240), width=2)
        elif category == "restaurant":
            draw.ellipse((gx, base - gw * 0.35, gx + gw, base), fill=(245, 245, 245))
            draw.ellipse((gx + gw * 0.25, base - gw * 0.27, gx + gw * 0.75, base - gw * 0.08), fill=_jitter(rng, (200, 120, 60), 40))
        elif category == "bakery":
            draw.ellipse((gx, base - gw * 0.5, gx + gw, base), fill=_jitter(rng, (200, 140, 70), 20))
        elif category == "pharmacy":
            draw.rectangle((gx, base - h * 0.45, gx + gw, base), fill=(240, 240, 240))
            draw.rectangle((gx + gw * 0.4, base - h * 0.38, gx + gw * 0.6, base - h * 0.12), fill=(40, 170, 70))
            draw.rectangle((gx + gw * 0.2, base - h * 0.3, gx + gw * 0.8, base - h * 0.2), fill=(40, 170, 70))
        elif category == "grocery":
            fruit = _jitter(rng, _choice(rng, ((220, 40, 40), (250, 160, 30), (240, 220, 50), (90, 180, 50))), 15)
            r = gw / 4
            for fx, fy in ((0.25, 0.25), (0.75, 0.25), (0.5, 0.6)):
                draw.ellipse((gx + fx * gw - r, base - fy * gw * 1.1 - r, gx + fx * gw + r, base - fy * gw * 1.1 + r), fill=fruit)
        elif category == "bar":
            bottle = _jitter(rng, _choice(rng, ((40, 110, 50), (110, 60, 30), (200, 200, 210))), 15)
            draw.rectangle((gx + gw * 0.2, base - h * 0.5, gx + gw * 0.8, base), fill=bottle)
            draw.rectangle((gx + gw * 0.4, base - h * 0.75, gx + gw * 0.6, base - h * 0.5), fill=bottle)
        elif category == "bank":
            draw.rectangle((gx, y0 + h * 0.3, gx + gw, base), fill=(70, 80, 95))
            draw.rectangle((gx + gw * 0.15, y0 + h * 0.38, gx + gw * 0.85, y0 + h * 0.55), fill=(120, 200, 230))
        elif category == "clothing":
            cloth = _jitter(rng, colour, 20)
            top = y0 + h * 0.3
            draw.line((gx, top, gx + gw, top), fill=(60, 60, 60), width=2)
            draw.polygon([(gx + gw * 0.3, top), (gx + gw * 0.7, top), (gx + gw, top + h * 0.15), (gx + gw * 0.8, base - h * 0.1), (gx + gw * 0.2, base - h * 0.1), (gx, top + h * 0.15)], fill=cloth)
        elif category == "hardware":
            if k % 2:
                draw.rectangle((gx, base - gw * 0.9, gx + gw, base), fill=_jitter(rng, (120, 120, 130), 40))
                draw.rectangle((gx, base - gw * 0.7, gx + gw, base - gw * 0.4), fill=colour)
            else:
                draw.line((gx + gw * 0.5, base, gx + gw * 0.5, base - h * 0.5), fill=(120, 80, 40), width=3)
                draw.rectangle((gx + gw * 0.1, base - h * 0.55, gx + gw * 0.9, base - h * 0.45), fill=(90, 90, 100))
        elif category == "hair_salon":
            draw.ellipse((gx + gw * 0.1, y0 + h * 0.15, gx + gw * 0.9, y0 + h * 0.5), fill=(200, 220, 230), outline=(160, 160, 160))
            draw.rectangle((gx + gw * 0.2, base - h * 0.3, gx + gw * 0.8, base - h * 0.15), fill=(30, 30, 30))
            draw.line((gx + gw * 0.5, base - h * 0.15, gx + gw * 0.5, base), fill=(120, 120, 120), width=2)
        elif category == "bookstore":
            for j in range(5):
                bw = gw / 5
                draw.rectangle((gx + j * bw, base - h * rng.uniform(0.3, 0.5), gx + (j + 0.85) * bw, base), fill=_jitter(rng, colour, 70))
        elif category == "florist":
            draw.polygon([(gx + gw * 0.2, base), (gx + gw * 0.8, base), (gx + gw * 0.9, base - gw * 0.5), (gx + gw * 0.1, base - gw * 0.5)], fill=(170, 90, 50))
            petal = _jitter(rng, _choice(rng, ((230, 60, 90), (250, 200, 50), (240, 240, 240), (170, 80, 200))), 15)
            for fx in (0.3, 0.5, 0.7):
                fy = base - gw * 0.5 - h * 0.2
                draw.line((gx + fx * gw, base - gw * 0.5, gx + fx * gw, fy), fill=(50, 140, 50), width=2)
                r = gw * 0.14
                draw.ellipse((gx + fx * gw - r, fy - r, gx + fx * gw + r, fy + r), fill=petal)


def _lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Uneven daylight: a brightness gradient across the image and a warm or cool tint."""
    S = img.width
    arr = np.asarray(img, dtype=np.float32)
    t = np.linspace(-0.5, 0.5, S, dtype=np.float32)
    gx, gy = rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.15)
    gain = rng.uniform(0.75, 1.1) + gx * t[None, :] + gy * t[:, None]
    tint = np.array([1.0, 1.0, 1.0], dtype=np.float32) + np.array([1, 0, -1], dtype=np.float32) * rng.uniform(-0.06, 0.06)
    arr = arr * gain[:, :, None] * tint[None, None, :]
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


